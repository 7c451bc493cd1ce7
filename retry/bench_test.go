package retry

import (
	"context"
	"testing"
	"time"
)

func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	b.Run("first-attempt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if Do(ctx, Policy{}, ok, nil) != nil {
				b.Fatal("failed")
			}
		}
	})
	b.Run("first-attempt/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = Do(ctx, Policy{}, ok, nil)
			}
		})
	})
	budget, _ := NewBudget(BudgetConfig{})
	b.Run("first-attempt/budget", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = Do(ctx, Policy{}, ok, nil, WithBudget(budget))
		}
	})
	b.Run("first-attempt/budget/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_ = Do(ctx, Policy{}, ok, nil, WithBudget(budget))
			}
		})
	})
	b.Run("DoValue/first-attempt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = DoValue(ctx, Policy{}, func(context.Context) (int, error) { return 1, nil }, nil)
		}
	})
}

// BenchmarkCallNext is the failure path: one failed attempt and its retry decision (Begin,
// Next with a retryable error), including the budget charge.
func BenchmarkCallNext(b *testing.B) {
	ctx := context.Background()
	now := time.Now()
	p := Policy{MaxAttempts: 1 << 30}
	b.Run("no-budget", func(b *testing.B) {
		b.ReportAllocs()
		c := p.NewCall(nil)
		for b.Loop() {
			c.Begin()
			if _, stop := c.Next(ctx, errSentinel, Backoff, now); stop != nil {
				b.Fatal(stop)
			}
		}
	})
	b.Run("no-budget/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			c := p.NewCall(nil)
			for pb.Next() {
				c.Begin()
				_, _ = c.Next(ctx, errSentinel, Backoff, now)
			}
		})
	})
	budget, _ := NewBudget(BudgetConfig{MinRetriesPerSecond: 1e12})
	b.Run("budget", func(b *testing.B) {
		b.ReportAllocs()
		c := p.NewCall(budget)
		for b.Loop() {
			c.Begin()
			if _, stop := c.Next(ctx, errSentinel, Backoff, now); stop != nil {
				b.Fatal(stop)
			}
		}
	})
	deadline, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	b.Run("budget/deadline/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			c := p.NewCall(budget)
			for pb.Next() {
				c.Begin()
				_, _ = c.Next(deadline, errSentinel, Backoff, now)
			}
		})
	})
	b.Run("stop", func(b *testing.B) { // gives up: allocates the *Error
		b.ReportAllocs()
		for b.Loop() {
			c := p.NewCall(nil)
			c.Begin()
			_, _ = c.Next(ctx, errSentinel, Stop, now)
		}
	})
}

func BenchmarkBudgetAllow(b *testing.B) {
	now := time.Now() // precomputed: Allow reads no clock itself
	b.Run("allowed", func(b *testing.B) {
		budget, _ := NewBudget(BudgetConfig{MinRetriesPerSecond: 1e12})
		b.ReportAllocs()
		for b.Loop() {
			if !budget.AllowAt(now) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("allowed/parallel", func(b *testing.B) {
		budget, _ := NewBudget(BudgetConfig{MinRetriesPerSecond: 1e12})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.AllowAt(now)
			}
		})
	})
	b.Run("refused", func(b *testing.B) {
		budget, _ := NewBudget(BudgetConfig{MinRetriesPerSecond: 1e-9})
		b.ReportAllocs()
		for b.Loop() {
			if budget.AllowAt(now) {
				b.Fatal("allowed")
			}
		}
	})
	b.Run("token-bucket", func(b *testing.B) {
		budget, _ := NewTokenBucket(10, 0.1)
		b.ReportAllocs()
		for b.Loop() {
			budget.AllowAt(now)
		}
	})
	b.Run("token-bucket/parallel", func(b *testing.B) {
		budget, _ := NewTokenBucket(10, 0.1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.AllowAt(now)
			}
		})
	})
}

func BenchmarkBudgetSucceeded(b *testing.B) {
	b.Run("ratio", func(b *testing.B) {
		budget, _ := NewBudget(BudgetConfig{})
		b.ReportAllocs()
		for b.Loop() {
			budget.Succeeded(false)
		}
	})
	b.Run("ratio/parallel", func(b *testing.B) {
		budget, _ := NewBudget(BudgetConfig{})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.Succeeded(false)
			}
		})
	})
	b.Run("token-bucket/full", func(b *testing.B) {
		budget, _ := NewTokenBucket(10, 0.1)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.Succeeded(false)
			}
		})
	})
}

var sinkDuration time.Duration

func BenchmarkBackoff(b *testing.B) {
	for _, j := range []Jitter{FullJitter, ProportionalJitter, NoJitter} {
		p := Policy{Jitter: j}
		b.Run(j.String(), func(b *testing.B) {
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				sinkDuration = p.Delay(n&15, 0.5)
				n++
			}
		})
	}
}
