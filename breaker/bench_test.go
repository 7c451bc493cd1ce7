package breaker

import (
	"context"
	"strconv"
	"testing"
	"time"
)

func mustNew(b *testing.B, cfg Config) *Breaker {
	b.Helper()
	br, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return br
}

// BenchmarkClosedSuccess is the hot path: admit and record a success.
func BenchmarkClosedSuccess(b *testing.B) {
	br := mustNew(b, Config{})
	b.ReportAllocs()
	for b.Loop() {
		p, err := br.Allow()
		if err != nil {
			b.Fatal(err)
		}
		p.Done(Success)
	}
}

func BenchmarkClosedSuccessParallel(b *testing.B) {
	br := mustNew(b, Config{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			p.Done(Success)
		}
	})
}

// BenchmarkOpenReject is an open breaker's rejection.
func BenchmarkOpenReject(b *testing.B) {
	br := mustNew(b, Config{})
	br.ForceOpen()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Allow(); err == nil {
			b.Fatal("admitted")
		}
	}
}

func BenchmarkOpenRejectParallel(b *testing.B) {
	br := mustNew(b, Config{ConsecutiveFailures: 1, RecoveryTime: time.Hour, MaxRecoveryTime: time.Hour})
	p, _ := br.Allow()
	p.Done(Failure) // Open (timer-driven), not ForcedOpen
	defer br.Reset()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.Allow(); err == nil {
				b.Fatal("admitted")
			}
		}
	})
}

// BenchmarkClosedFailure is the slow path: a failure takes the mutex and
// reads the clock (the streak rule is off so it never trips).
func BenchmarkClosedFailure(b *testing.B) {
	br := mustNew(b, Config{ConsecutiveFailures: -1, ThrottleK: -1})
	b.ReportAllocs()
	for b.Loop() {
		p, _ := br.Allow()
		p.Done(Failure)
	}
}

// throttling returns a breaker whose throttle sheds 99.99% of the calls:
// 10,000 calls failed (the streak rule is off).
func throttling(b *testing.B) *Breaker {
	br := mustNew(b, Config{ConsecutiveFailures: -1})
	for range 10000 {
		p, _ := br.AllowRetry()
		p.Done(Failure)
	}
	return br
}

// BenchmarkThrottledReject is the throttle's rejection of a call.
func BenchmarkThrottledReject(b *testing.B) {
	br := throttling(b)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = br.Allow()
	}
}

func BenchmarkThrottledRejectParallel(b *testing.B) {
	br := throttling(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = br.Allow()
		}
	})
}

func BenchmarkDo(b *testing.B) {
	br := mustNew(b, Config{})
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		if err := br.Do(ctx, fn, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGroupGet(b *testing.B) {
	g, err := NewGroup(Config{})
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = "/pkg.Svc/Method" + strconv.Itoa(i)
		g.Get(keys[i])
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			g.Get(keys[i&63])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				g.Get(keys[i&63])
				i++
			}
		})
	})
}
