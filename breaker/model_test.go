package breaker

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// refModel is a small reference model of the documented semantics, written
// naively (a list of stamped tallies instead of a bucket ring, explicit
// time, no atomics, one stripe), for the property test below. The throttle's
// random draw is the breaker's: the model checks that the breaker throttles
// only while its reject probability is positive, and never a retry.
type refModel struct {
	cfg        Config // normalized, no jitter
	epoch, now time.Time
	state      State
	gen        uint64
	streak     uint64
	flag       bool           // the streak holds a failed retry or call
	stamped    []stampedTally // the window's tallies, in stamping order
	hotSucc    uint64         // successes recorded on the fast path, lifetime
	hotThr     uint64         // throttled calls, lifetime
	pend       tally          // fast-path counts not stamped yet
	thrWord    uint32         // the throttle word as the breaker holds it
	successRun int
	openedAt   time.Time
	openDur    time.Duration
	openUntil  time.Time
	probes     []refProbe
	probeSeq   uint32
	hoSucc     int
	counts     Counts
}

type stampedTally struct {
	at time.Time
	tally
}

type refProbe struct {
	seq      uint32
	deadline time.Time
}

type refPermit struct {
	gen   uint64
	state State
	probe uint32
	retry bool
}

func (m *refModel) transition(to State) {
	if m.state != to {
		m.counts.Transitions++
	}
	m.gen++
	m.state = to
	m.probes = nil
	m.hoSucc = 0
	if to != Closed {
		m.thrWord = 0
	}
}

func (m *refModel) enterWindowed(to State) {
	m.clearWindow()
	m.transition(to)
}

func (m *refModel) clearWindow() {
	m.stamped, m.pend, m.streak, m.flag, m.successRun, m.thrWord = nil, tally{}, 0, false, 0, 0
}

func (m *refModel) fold() {
	if m.pend != (tally{}) {
		m.stamped = append(m.stamped, stampedTally{m.now, m.pend})
		m.pend = tally{}
	}
}

func (m *refModel) bucket(t time.Time) int64 {
	return int64(t.Sub(m.epoch) / (m.cfg.Window / windowBuckets))
}

func (m *refModel) windowSum() (t tally) {
	cur := m.bucket(m.now)
	for _, s := range m.stamped {
		if i := m.bucket(s.at); i > cur-windowBuckets && i <= cur {
			t.add(s.tally)
		}
	}
	return t
}

func (m *refModel) probability() float64 {
	k := m.cfg.ThrottleK
	if k <= 0 {
		return 0
	}
	t := m.windowSum()
	calls := t.succ + t.callFail
	if calls < uint64(m.cfg.MinimumCalls) {
		return 0
	}
	return max(0, min((float64(calls)-k*float64(t.succ))/float64(calls+1), 1))
}

func (m *refModel) updateThrottle() {
	m.thrWord = 0
	if m.cfg.ThrottleK > 0 && m.state == Closed {
		m.thrWord = throttleWord(m.probability())
	}
}

func (m *refModel) recoverRun() int {
	if m.cfg.ThrottleK <= 1 {
		return 0
	}
	return int(math.Ceil(math.Log(1e5) / math.Log(m.cfg.ThrottleK)))
}

func (m *refModel) open() {
	d := max(m.cfg.RecoveryTime, min(m.cfg.MaxRecoveryTime, m.now.Sub(m.openedAt)/3))
	m.openDur, m.openUntil = d, m.now.Add(d)
	m.transition(Open)
}

// allow admits or rejects; throttled is what the breaker did in Closed.
func (m *refModel) allow(t *rapid.T, retry, throttled bool) (refPermit, State, bool) {
	switch m.state {
	case Open, ForcedOpen:
		m.counts.Rejections++
		return refPermit{}, m.state, false
	case HalfOpen:
		m.probes = slices.DeleteFunc(m.probes, func(p refProbe) bool { return !m.now.Before(p.deadline) })
		if len(m.probes)+m.hoSucc >= m.cfg.HalfOpenMaxCalls {
			m.counts.Rejections++
			return refPermit{}, HalfOpen, false
		}
		m.probeSeq++
		m.probes = append(m.probes, refProbe{m.probeSeq, m.now.Add(m.openDur)})
		return refPermit{m.gen, HalfOpen, m.probeSeq, retry}, 0, true
	}
	if throttled {
		if retry || m.state != Closed || m.thrWord == 0 {
			t.Fatalf("throttled: retry=%v state %v word %d", retry, m.state, m.thrWord)
		}
		m.counts.Throttled++
		m.hotThr++
		m.pend.thr++
		if m.hotThr%64 == 0 {
			m.fold()
			m.updateThrottle()
		}
		return refPermit{}, Closed, false
	}
	return refPermit{gen: m.gen, state: m.state, retry: retry}, 0, true
}

func (m *refModel) count(o Outcome) {
	switch o {
	case Success:
		m.counts.Successes++
	case Failure:
		m.counts.Failures++
	case Ignored:
		m.counts.Ignored++
	}
}

func (m *refModel) done(p refPermit, o Outcome, final bool) {
	if p.state == Disabled {
		return
	}
	m.count(o)
	windowed := p.state == Closed || p.state == MetricsOnly
	if windowed && o == Ignored {
		return
	}
	if windowed && o == Success && m.thrWord == 0 && p.gen == m.gen {
		m.hotSucc++
		m.pend.succ++
		if m.hotSucc%64 == 0 {
			m.fold()
			m.updateThrottle()
		}
		m.streak, m.flag = 0, false
		return
	}
	if p.gen != m.gen {
		return
	}
	switch p.state {
	case Closed, MetricsOnly:
		m.fold()
		switch o {
		case Success:
			m.streak, m.flag = 0, false
			m.stamped = append(m.stamped, stampedTally{m.now, tally{succ: 1}})
			m.successRun++
			if m.thrWord != 0 && m.recoverRun() > 0 && m.successRun >= m.recoverRun() {
				m.clearWindow()
			}
			m.updateThrottle()
		case Failure:
			u := tally{fail: 1}
			if final {
				u.callFail = 1
				m.successRun = 0
			}
			m.stamped = append(m.stamped, stampedTally{m.now, u})
			m.streak++
			m.flag = m.flag || p.retry || final
			if !m.tripped(final) {
				if final {
					m.updateThrottle()
				}
				return
			}
			if m.state == MetricsOnly {
				m.counts.ShadowTrips++
				m.clearWindow()
				m.updateThrottle()
				return
			}
			m.openedAt = m.now
			m.open()
		}
	case HalfOpen:
		i := slices.IndexFunc(m.probes, func(q refProbe) bool { return q.seq == p.probe })
		if i < 0 {
			return
		}
		m.probes = slices.Delete(m.probes, i, i+1)
		switch o {
		case Success:
			if m.hoSucc++; m.hoSucc >= m.cfg.HalfOpenMaxCalls {
				m.enterWindowed(Closed)
			}
		case Failure:
			m.open()
		}
	}
}

// tripped is the documented rule, computed naively.
func (m *refModel) tripped(final bool) bool {
	if n := uint64(m.cfg.ConsecutiveFailures); m.cfg.ConsecutiveFailures > 0 && m.flag && m.streak >= n {
		t := m.windowSum()
		need := n
		if prior := t.fail - min(t.fail, m.streak); prior > 0 && prior+t.succ >= uint64(m.cfg.MinimumCalls) {
			if f := float64(prior) / float64(prior+t.succ); f > 0.3 {
				need = 4 * n
				if f < 1 {
					need = min(need, uint64(math.Ceil(float64(n)*math.Log(0.3)/math.Log(f))))
				}
			}
		}
		if m.streak >= need {
			return true
		}
	}
	if m.cfg.FailureRate > 0 && final {
		t := m.windowSum()
		calls := t.succ + t.callFail
		return calls >= uint64(m.cfg.MinimumCalls) && float64(t.callFail) >= m.cfg.FailureRate*float64(calls)
	}
	return false
}

func (m *refModel) advance(d time.Duration) {
	m.now = m.now.Add(d)
	if m.state == Open && !m.now.Before(m.openUntil) {
		m.transition(HalfOpen)
	}
}

func (m *refModel) reconfigure(c Config) {
	old := m.cfg
	m.cfg = c
	if c.Window != old.Window {
		m.stamped, m.pend = nil, tally{}
	}
	if c.Mode != old.Mode && c.Mode != m.state {
		switch c.Mode {
		case Closed, MetricsOnly:
			m.enterWindowed(c.Mode)
		case Disabled:
			m.transition(Disabled)
		}
	}
	if m.state == HalfOpen && m.hoSucc >= c.HalfOpenMaxCalls {
		m.enterWindowed(Closed)
	}
	if m.state == Closed {
		m.updateThrottle()
	}
}

func (m *refModel) snapshot() Counts {
	c := m.counts
	if m.state == Closed || m.state == MetricsOnly {
		m.fold()
		c.ThrottleProbability = m.probability()
	}
	t := m.windowSum()
	c.State = m.state
	c.Generation = m.gen
	if m.state == Open {
		c.OpenUntil = m.openUntil
	}
	c.ConsecutiveFailures = m.streak
	c.WindowCalls, c.WindowFailures, c.WindowThrottled = t.succ+t.callFail, t.callFail, t.thr
	return c
}

func drawConfig(t *rapid.T, recovery time.Duration) Config {
	return Config{
		ConsecutiveFailures: rapid.SampledFrom([]int{-1, 1, 2, 3, 6}).Draw(t, "streak"),
		ThrottleK:           rapid.SampledFrom([]float64{-1, 1, 1.5, 2, 2, 3}).Draw(t, "k"),
		FailureRate:         rapid.SampledFrom([]float64{0, 0, 0.25, 0.5, 1}).Draw(t, "rate"),
		MinimumCalls:        rapid.SampledFrom([]int{1, 4, 8, 20}).Draw(t, "min_calls"),
		Window:              rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second}).Draw(t, "window"),
		RecoveryTime:        recovery,
		MaxRecoveryTime:     recovery * time.Duration(rapid.SampledFrom([]int{1, 3, 8}).Draw(t, "cap_factor")),
		RecoveryJitter:      -1,
		HalfOpenMaxCalls:    rapid.IntRange(1, 3).Draw(t, "half_open"),
		Mode:                rapid.SampledFrom([]State{Closed, Closed, Closed, MetricsOnly, Disabled}).Draw(t, "mode"),
	}
}

// TestModel compares the breaker with refModel over random sequences of
// operations (calls of one attempt, first attempts that retry, retries,
// held permits, time, throttled calls, manual control, reconfiguration,
// counts) on an explicit clock. For a deeper search run it with
// -rapid.checks=30000.
func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		recovery := time.Duration(rapid.IntRange(1, 5).Draw(t, "recovery_s")) * time.Second
		cfg := drawConfig(t, recovery)
		clk := newFakeClock()
		b, err := newBreaker(cfg, clk.Now, clk.AfterFunc, constRand(0.5))
		if err != nil {
			t.Fatal(err)
		}
		b.stripes = make([]stripe, 1)
		ncfg, _ := cfg.Normalize()
		m := &refModel{cfg: ncfg, epoch: clk.Now(), now: clk.Now(), state: cfg.Mode}

		type held struct {
			real Permit
			ref  refPermit
		}
		var permits []held
		allow := func(t *rapid.T, retry bool) (held, bool) {
			f := b.Allow
			if retry {
				f = b.AllowRetry
			}
			p, err := f()
			mp, rejState, ok := m.allow(t, retry, errors.Is(err, ErrThrottled))
			if ok != (err == nil) {
				t.Fatalf("Allow: breaker err=%v, model admits=%v (model state %v)", err, ok, m.state)
			}
			if !ok {
				var oe *OpenError
				if !errors.As(err, &oe) || oe.State() != rejState {
					t.Fatalf("Allow: rejection %v, model %v", err, rejState)
				}
				return held{}, false
			}
			return held{p, mp}, true
		}
		record := func(h held, o Outcome, final bool) {
			if final {
				h.real.Done(o)
			} else {
				h.real.RetryAt(o, time.Time{})
			}
			m.done(h.ref, o, final || o == Success)
		}
		outcomes := rapid.SampledFrom([]Outcome{Success, Success, Failure, Failure, Ignored})
		type action struct {
			weight int
			run    func(t *rapid.T)
		}
		actions := []action{
			{8, func(t *rapid.T) { // take a permit and hold it
				if h, ok := allow(t, rapid.Bool().Draw(t, "retry")); ok {
					permits = append(permits, h)
				}
			}},
			{8, func(t *rapid.T) { // report a held permit
				if len(permits) == 0 {
					return
				}
				i := rapid.IntRange(0, len(permits)-1).Draw(t, "permit")
				h := permits[i]
				permits = slices.Delete(permits, i, i+1)
				record(h, outcomes.Draw(t, "outcome"), rapid.Bool().Draw(t, "final"))
			}},
			{6, func(t *rapid.T) { // n calls with the same outcome, reported at once
				o := outcomes.Draw(t, "outcome")
				for range rapid.IntRange(1, 70).Draw(t, "n") {
					if h, ok := allow(t, false); ok {
						record(h, o, true)
					}
				}
			}},
			{4, func(t *rapid.T) { // n calls whose first attempt fails and whose retry has outcome o
				o := outcomes.Draw(t, "outcome")
				for range rapid.IntRange(1, 40).Draw(t, "n") {
					if h, ok := allow(t, false); ok {
						record(h, Failure, false)
						if h, ok := allow(t, true); ok {
							record(h, o, true)
						}
					}
				}
			}},
			{4, func(t *rapid.T) {
				d := rapid.SampledFrom([]time.Duration{time.Millisecond, 100 * time.Millisecond, time.Second, 4 * time.Second, 11 * time.Second, time.Minute}).Draw(t, "d")
				clk.Advance(d)
				m.advance(d)
			}},
			{6, func(t *rapid.T) { // exactly to (or just before) the next deadline
				var next time.Time
				switch {
				case m.state == Open:
					next = m.openUntil
				case m.state == HalfOpen && len(m.probes) > 0:
					next = m.probes[rapid.IntRange(0, len(m.probes)-1).Draw(t, "probe")].deadline
				default:
					return
				}
				d := next.Sub(m.now) - time.Duration(rapid.IntRange(0, 1).Draw(t, "early"))
				if d < 0 {
					return
				}
				clk.Advance(d)
				m.advance(d)
			}},
			{3, func(t *rapid.T) {
				got, want := b.Counts(), m.snapshot()
				if got != want {
					t.Fatalf("Counts:\n got  %+v\n want %+v", got, want)
				}
			}},
			{1, func(*rapid.T) {
				b.ForceOpen()
				if m.state != ForcedOpen {
					m.transition(ForcedOpen)
				}
			}},
			{1, func(*rapid.T) {
				b.Reset()
				m.enterWindowed(Closed)
			}},
			{1, func(*rapid.T) {
				b.Disable()
				if m.state != Disabled {
					m.transition(Disabled)
				}
			}},
			{1, func(*rapid.T) {
				b.MetricsOnly()
				if m.state != MetricsOnly {
					m.enterWindowed(MetricsOnly)
				}
			}},
			{1, func(t *rapid.T) {
				c := drawConfig(t, m.cfg.RecoveryTime)
				if err := b.Reconfigure(c); err != nil {
					t.Fatal(err)
				}
				nc, _ := c.Normalize()
				m.reconfigure(nc)
			}},
		}
		total := 0
		for _, a := range actions {
			total += a.weight
		}
		for range rapid.IntRange(1, 200).Draw(t, "steps") {
			w := rapid.IntRange(0, total-1).Draw(t, "action")
			for _, a := range actions {
				if w -= a.weight; w < 0 {
					a.run(t)
					break
				}
			}
			if got := b.State(); got != m.state {
				t.Fatalf("State: got %v, model %v", got, m.state)
			}
			if got := b.throttle.Load(); got != m.thrWord {
				t.Fatalf("throttle word: got %d, model %d", got, m.thrWord)
			}
		}
		b.Reset() // stop the timer
	})
}
