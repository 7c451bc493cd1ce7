package scenario

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

// Result is what one run of a scenario measured.
type Result struct {
	Success   float64       // share of the calls that succeeded (in the scenario's span of interest)
	Opens     int           // times a breaker opened
	Attempts  int64         // attempts that reached the server (in the span of interest)
	Goodput   float64       // successful calls per second (brownout: during it)
	Before    float64       // brownout: goodput before it
	Recovered time.Duration // brownout: time after its end until the goodput over 500ms is back to 95% of Before; -1 never
	Succeeded int           // herd: callers that succeeded
	Late      time.Duration // herd: the most a caller returned after its deadline (0: none)
}

// with starts an env with the defaults (breakerOn) or the breaker off, runs
// f on it, and sets the result's Opens to the breaker's openings.
func with(breakerOn bool, f func(e *Env) (Result, error)) (Result, error) {
	var opens atomic.Int64
	e, err := Start(Policies(breakerOn), interceptors.WithOnStateChange(func(_ string, _, to breaker.State) {
		if to == breaker.Open {
			opens.Add(1)
		}
	}))
	if err != nil {
		return Result{}, err
	}
	defer e.Close()
	r, err := f(e)
	r.Opens = int(opens.Load())
	return r, err
}

// RollingRestart: every call's first attempt fails UNAVAILABLE (each new
// connection's first attempt meets a closing one) and its retry works; 16
// callers, a call each every 10 ms, for 3 s. (With 32 callers starting at
// once, the retry budget's reserve refuses about 0.1% of the first retries,
// with or without a breaker.)
func RollingRestart(breakerOn bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		e.Faults.failFirst = true
		tl := Run(e, Load{Callers: 16, Interval: 10 * time.Millisecond, Timeout: time.Second}, 3*time.Second, time.Second, nil)
		return Result{Success: tl.Rate(0, 3*time.Second)}, nil
	})
}

// PartialFailure: half of the calls fail, every attempt of them (retries
// cannot help); 16 callers, a call each every 20 ms, for 5 s.
func PartialFailure(breakerOn bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		e.Faults.callFailP = 0.5
		tl := Run(e, Load{Callers: 16, Interval: 20 * time.Millisecond, Timeout: time.Second}, 5*time.Second, time.Second, nil)
		return Result{Success: tl.Rate(0, 5*time.Second)}, nil
	})
}

// Brownout: about 200 calls/s against a server that serves 160 calls/s
// and, from 2 s to 5 s, 80 (its capacity halves; the excess gets
// RESOURCE_EXHAUSTED); 7 s in all.
func Brownout(breakerOn bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		e.Faults.SetCapacity(160)
		sec := time.Second
		tl := Run(e, Load{Callers: 20, Interval: 100 * time.Millisecond, Timeout: sec}, 7*sec, 50*time.Millisecond, func() {
			time.Sleep(2 * sec)
			e.Faults.SetCapacity(80)
			time.Sleep(3 * sec)
			e.Faults.SetCapacity(160)
		})
		before := tl.Goodput(sec, 2*sec)
		r := Result{Goodput: tl.Goodput(2*sec, 5*sec), Before: before, Recovered: -1}
		if at := tl.Recovery(5*sec, recoveryWindow, 0.95*before); at >= 0 {
			r.Recovered = at - 5*sec
		}
		return r, nil
	})
}

// recoveryWindow is the window over which Brownout measures the goodput
// after the brownout.
const recoveryWindow = 500 * time.Millisecond

// Outage: 8 callers, a call each every 20 ms; the server is down from 1 s
// to 4 s; 7 s in all. Success is measured from 1.2 s after the recovery;
// Attempts counts the attempts that reached the server during the outage.
func Outage(breakerOn bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		sec := time.Second
		var during int64
		tl := Run(e, Load{Callers: 8, Interval: 20 * time.Millisecond, Timeout: sec}, 7*sec, 100*time.Millisecond, func() {
			time.Sleep(sec)
			before := e.Faults.Attempts()
			e.Faults.SetDown(true)
			time.Sleep(3 * sec)
			e.Faults.SetDown(false)
			during = e.Faults.Attempts() - before
		})
		return Result{Success: tl.Rate(5200*time.Millisecond, 7*sec), Attempts: during}, nil
	})
}

// Herd: an outage opens the breaker; when its open period has ended, 200
// callers (deadline 1 s each) arrive at once, the server recovered or still
// down. Attempts counts the attempts the crowd made reach the server.
func Herd(breakerOn, recovered bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		e.Faults.SetDown(true)
		for range 20 {
			_, _ = e.Client.Unary(context.Background(), &echov1.UnaryRequest{Message: "x"})
		}
		time.Sleep(1300 * time.Millisecond) // past the first open period (1 s ± 20%)
		e.Faults.SetDown(!recovered)
		before := e.Faults.Attempts()
		var ok atomic.Int64
		var late atomic.Int64
		var wg sync.WaitGroup
		for i := range 200 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				deadline, _ := ctx.Deadline()
				_, err := e.Client.Unary(ctx, &echov1.UnaryRequest{Message: "h" + strconv.Itoa(i)})
				if err == nil {
					ok.Add(1)
				}
				if d := time.Since(deadline); d > 0 {
					for l := late.Load(); int64(d) > l && !late.CompareAndSwap(l, int64(d)); l = late.Load() {
					}
				}
			})
		}
		wg.Wait()
		return Result{Succeeded: int(ok.Load()), Attempts: e.Faults.Attempts() - before, Late: time.Duration(late.Load())}, nil
	})
}

// HerdRecovered is Herd with the server recovered.
func HerdRecovered(breakerOn bool) (Result, error) { return Herd(breakerOn, true) }

// HerdDown is Herd with the server still down.
func HerdDown(breakerOn bool) (Result, error) { return Herd(breakerOn, false) }

// Reload: an outage opens the breaker, then the policies are reloaded with
// other breaker settings (Suite.Update), then 50 calls are made. Attempts
// counts the attempts that reached the (still dead) server after the reload.
func Reload(breakerOn bool) (Result, error) {
	return with(breakerOn, func(e *Env) (Result, error) {
		e.Faults.SetDown(true)
		for range 20 {
			_, _ = e.Client.Unary(context.Background(), &echov1.UnaryRequest{Message: "x"})
		}
		p := Policies(breakerOn)
		pol := p["*"]
		pol.Breaker.ConsecutiveFailures = 20
		p["*"] = pol
		if err := e.Suite.Update(p); err != nil {
			return Result{}, err
		}
		before := e.Faults.Attempts()
		for i := range 50 {
			_, _ = e.Client.Unary(context.Background(), &echov1.UnaryRequest{Message: "r" + strconv.Itoa(i)})
		}
		return Result{Attempts: e.Faults.Attempts() - before}, nil
	})
}

// Pair is a scenario's result with the defaults (On) and with the breaker
// disabled (Off).
type Pair struct{ On, Off Result }

// Report is every scenario's Pair.
type Report struct {
	RollingRestart, PartialFailure, Brownout, Outage, HerdRecovered, HerdDown, Reload Pair
}

// Measure runs every scenario with the defaults and with the breaker off,
// the two at once.
func Measure() (Report, error) {
	var r Report
	for _, s := range []struct {
		dst *Pair
		f   func(bool) (Result, error)
	}{
		{&r.RollingRestart, RollingRestart},
		{&r.PartialFailure, PartialFailure},
		{&r.Brownout, Brownout},
		{&r.Outage, Outage},
		{&r.HerdRecovered, HerdRecovered},
		{&r.HerdDown, HerdDown},
		{&r.Reload, Reload},
	} {
		var errOn, errOff error
		var wg sync.WaitGroup
		wg.Go(func() { s.dst.On, errOn = s.f(true) })
		wg.Go(func() { s.dst.Off, errOff = s.f(false) })
		wg.Wait()
		if errOn != nil {
			return r, errOn
		}
		if errOff != nil {
			return r, errOff
		}
	}
	return r, nil
}

// Rows returns the README's table.
func (r Report) Rows() []Row {
	var rows []Row
	add := func(situation, measure string, p Pair, format func(Result) string) {
		rows = append(rows, Row{situation, measure, format(p.On), format(p.Off)})
	}
	success := func(r Result) string { return Pct(r.Success) }
	attempts := func(r Result) string { return strconv.FormatInt(r.Attempts, 10) }
	add("1. rolling restart: every first attempt fails, its retry works", "calls that succeed", r.RollingRestart, success)
	add("", "breaker openings", r.RollingRestart, func(r Result) string { return strconv.Itoa(r.Opens) })
	add("2. partial failure: 50% of the calls fail, retries cannot help", "calls that succeed", r.PartialFailure, success)
	add("3. brownout: capacity 160/s halves for 3 s under 200 calls/s", "goodput during the brownout", r.Brownout, func(r Result) string { return fmt.Sprintf("%.0f/s", r.Goodput) })
	add("", "back to the goodput before it", r.Brownout, func(r Result) string {
		if r.Recovered < 0 {
			return "never"
		}
		return "after " + r.Recovered.String()
	})
	add("4. outage of 3 s", "calls that succeed from 1.2 s after it", r.Outage, success)
	add("", "attempts that reached the dead server", r.Outage, attempts)
	add("5. 200 callers at half-open, server recovered", "callers that succeed", r.HerdRecovered, func(r Result) string { return strconv.Itoa(r.Succeeded) + " of 200" })
	add("   200 callers at half-open, server still down", "attempts that reached it", r.HerdDown, attempts)
	late := func(r Result) string {
		if r.Late > 0 {
			return "late by " + r.Late.String()
		}
		return "none"
	}
	add("", "callers that returned after their deadline", r.HerdDown, late)
	add("6. reload with new breaker settings during an outage", "attempts that reached the dead server", r.Reload, attempts)
	return rows
}

// Problems lists where the defaults broke the project's promises: never
// worse than no breaker, and the figures of the breaker's design. slack
// widens the time bounds (for runs on the real clock of a busy machine).
func (r Report) Problems(slack time.Duration) []string {
	var out []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			out = append(out, fmt.Sprintf(format, args...))
		}
	}
	rr := r.RollingRestart.On
	check(rr.Success == 1 && rr.Opens == 0, "rolling restart: %s succeeded and the breaker opened %d times, want 100%% and 0", Pct(rr.Success), rr.Opens)
	pf := r.PartialFailure
	check(pf.On.Success >= pf.Off.Success-0.02, "partial failure: %s succeeded, %s without a breaker", Pct(pf.On.Success), Pct(pf.Off.Success))
	bo := r.Brownout
	// 3% in simulated time; on a busy machine's real clock (slack > 0) two
	// runs of the same client differ by more, so 10%.
	tol := 0.97
	if slack > 0 {
		tol = 0.90
	}
	check(bo.On.Goodput >= tol*bo.Off.Goodput, "brownout: goodput %.0f/s, %.0f/s without a breaker", bo.On.Goodput, bo.Off.Goodput)
	// Recovery is judged against the plain client: on a busy machine's real
	// clock even it may never get back to 95% of its earlier goodput, and
	// then the breaker cannot be blamed for the same. There, the goodput over
	// the recovery window varies by more than 5% between two runs of the same
	// client, so their recovery times may differ by up to the window.
	if bo.Off.Recovered >= 0 {
		bound := max(200*time.Millisecond, bo.Off.Recovered) + slack
		if slack > 0 {
			bound += recoveryWindow
		}
		check(bo.On.Recovered >= 0 && bo.On.Recovered <= bound, "brownout: goodput back after %v, want within %v (no breaker: %v)", bo.On.Recovered, bound, bo.Off.Recovered)
	}
	check(r.Outage.On.Success >= 0.99, "outage: %s succeeded from 1.2s after the recovery, want >= 99%%", Pct(r.Outage.On.Success))
	check(r.HerdRecovered.On.Succeeded >= 190, "herd, recovered: %d of 200 succeeded, want >= 190", r.HerdRecovered.On.Succeeded)
	check(r.HerdDown.On.Attempts <= 1, "herd, still down: %d attempts reached the server, want <= 1 (HalfOpenMaxCalls)", r.HerdDown.On.Attempts)
	check(r.HerdDown.On.Late <= slack && r.HerdRecovered.On.Late <= slack, "herd: a caller returned %v after its deadline", max(r.HerdDown.On.Late, r.HerdRecovered.On.Late))
	check(r.Reload.On.Attempts == 0, "reload: %d attempts reached the dead server after the reload, want 0", r.Reload.On.Attempts)
	return out
}
