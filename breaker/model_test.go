package breaker

import (
	"errors"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// refModel is a small reference model of the documented semantics, written
// naively (a list of stamped outcomes instead of a bucket ring, explicit
// time, no atomics), for the property test below.
type refModel struct {
	cfg        Config // normalized, no jitter
	epoch, now time.Time
	state      State
	gen        uint64
	streak     uint64
	stamped    []stampedOutcome // the rate window's outcomes, in stamping order
	hotN       uint64           // successes recorded on the fast path, lifetime (every 64th stamps)
	pending    uint64           // fast-path successes not stamped yet
	reopens    int
	openDur    time.Duration
	openUntil  time.Time
	probes     []refProbe
	probeSeq   uint32
	hoSucc     int
	counts     Counts
}

type stampedOutcome struct {
	at         time.Time
	succ, fail uint64
}

type refProbe struct {
	seq      uint32
	deadline time.Time
}

type refPermit struct {
	gen   uint64
	state State
	probe uint32
}

func (m *refModel) transition(to State) {
	if m.state != to {
		m.counts.Transitions++
	}
	m.gen++
	m.state = to
	m.probes = nil
	m.hoSucc = 0
}

func (m *refModel) enterWindowed(to State) {
	m.clearWindow()
	m.transition(to)
}

func (m *refModel) clearWindow() {
	m.stamped, m.pending, m.streak = nil, 0, 0
}

func (m *refModel) stamp() {
	if m.pending > 0 {
		m.stamped = append(m.stamped, stampedOutcome{at: m.now, succ: m.pending})
		m.pending = 0
	}
}

func (m *refModel) bucket(t time.Time) int64 {
	return int64(t.Sub(m.epoch) / (m.cfg.Window / windowBuckets))
}

func (m *refModel) windowSum() (calls, fails uint64) {
	cur := m.bucket(m.now)
	for _, s := range m.stamped {
		if i := m.bucket(s.at); i > cur-windowBuckets && i <= cur {
			calls += s.succ + s.fail
			fails += s.fail
		}
	}
	return calls, fails
}

func (m *refModel) open() {
	d := m.cfg.RecoveryTime
	for range m.reopens {
		d *= 2
		if d >= m.cfg.MaxRecoveryTime {
			d = m.cfg.MaxRecoveryTime
			break
		}
	}
	m.openDur, m.openUntil = d, m.now.Add(d)
	m.transition(Open)
}

func (m *refModel) allow() (refPermit, State, bool) {
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
		return refPermit{m.gen, HalfOpen, m.probeSeq}, 0, true
	}
	return refPermit{gen: m.gen, state: m.state}, 0, true
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

func (m *refModel) done(p refPermit, o Outcome) {
	if p.state == Disabled {
		return
	}
	m.count(o)
	if p.gen != m.gen {
		return
	}
	switch p.state {
	case Closed, MetricsOnly:
		switch o {
		case Success:
			m.streak = 0
			m.hotN++
			m.pending++
			if m.hotN%64 == 0 {
				m.stamp()
			}
		case Failure:
			m.stamp()
			m.stamped = append(m.stamped, stampedOutcome{at: m.now, fail: 1})
			m.streak++
			calls, fails := m.windowSum()
			trip := (m.cfg.ConsecutiveFailures > 0 && m.streak >= uint64(m.cfg.ConsecutiveFailures)) ||
				(m.cfg.MinimumCalls > 0 && calls >= uint64(m.cfg.MinimumCalls) && float64(fails) >= m.cfg.FailureRate*float64(calls))
			switch {
			case !trip:
			case m.state == MetricsOnly:
				m.counts.ShadowTrips++
				m.clearWindow()
			default:
				m.open()
			}
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
				m.reopens = 0
				m.enterWindowed(Closed)
			}
		case Failure:
			m.reopens++
			m.open()
		}
	}
}

func (m *refModel) advance(d time.Duration) {
	m.now = m.now.Add(d)
	if m.state == Open && !m.now.Before(m.openUntil) {
		m.transition(HalfOpen)
	}
}

func (m *refModel) snapshot() Counts {
	if m.state == Closed || m.state == MetricsOnly {
		m.stamp()
	}
	c := m.counts
	c.State = m.state
	c.Generation = m.gen
	c.ConsecutiveFailures = m.streak
	c.WindowCalls, c.WindowFailures = m.windowSum()
	return c
}

// TestModel compares the breaker with refModel over random sequences of
// operations (allow, done, calls, advance time, isolate, reset, disable,
// metrics-only, counts) on an explicit clock. For a deeper search run it
// with -rapid.checks=30000 (about a second).
func TestModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		recovery := time.Duration(rapid.IntRange(1, 5).Draw(t, "recovery_s")) * time.Second
		cfg := Config{
			ConsecutiveFailures: rapid.SampledFrom([]int{-1, 1, 2, 3, 6}).Draw(t, "streak"),
			FailureRate:         rapid.SampledFrom([]float64{0.25, 0.5, 1}).Draw(t, "rate"),
			MinimumCalls:        rapid.SampledFrom([]int{-1, 1, 4, 8}).Draw(t, "min_calls"),
			Window:              rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second}).Draw(t, "window"),
			RecoveryTime:        recovery,
			MaxRecoveryTime:     recovery * time.Duration(rapid.SampledFrom([]int{1, 3, 8}).Draw(t, "cap_factor")),
			RecoveryJitter:      -1,
			HalfOpenMaxCalls:    rapid.IntRange(1, 3).Draw(t, "half_open"),
			Mode:                rapid.SampledFrom([]State{Closed, Closed, MetricsOnly, Disabled}).Draw(t, "mode"),
		}
		clk := newFakeClock()
		b, err := newBreaker(cfg, clk.Now, clk.AfterFunc, constRand(0.5))
		if err != nil {
			t.Fatal(err)
		}
		ncfg, _ := cfg.normalize()
		m := &refModel{cfg: ncfg, epoch: clk.Now(), now: clk.Now(), state: cfg.Mode}

		type held struct {
			real Permit
			ref  refPermit
		}
		var permits []held
		allow := func(t *rapid.T) (held, bool) {
			p, err := b.Allow()
			mp, rejState, ok := m.allow()
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
		outcomes := rapid.SampledFrom([]Outcome{Success, Success, Failure, Failure, Ignored})
		type action struct {
			weight int
			run    func(t *rapid.T)
		}
		actions := []action{
			{8, func(t *rapid.T) { // take a permit and hold it
				if h, ok := allow(t); ok {
					permits = append(permits, h)
				}
			}},
			{8, func(t *rapid.T) { // report a held permit
				if len(permits) == 0 {
					return
				}
				i := rapid.IntRange(0, len(permits)-1).Draw(t, "permit")
				o := outcomes.Draw(t, "outcome")
				h := permits[i]
				permits = slices.Delete(permits, i, i+1)
				h.real.Done(o)
				m.done(h.ref, o)
			}},
			{6, func(t *rapid.T) { // n calls with the same outcome, reported at once
				o := outcomes.Draw(t, "outcome")
				for range rapid.IntRange(1, 70).Draw(t, "n") {
					if h, ok := allow(t); ok {
						h.real.Done(o)
						m.done(h.ref, o)
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
				b.Isolate()
				if m.state != ForcedOpen {
					m.transition(ForcedOpen)
				}
			}},
			{1, func(*rapid.T) {
				b.Reset()
				m.reopens = 0
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
		}
		b.Reset() // stop the timer
	})
}
