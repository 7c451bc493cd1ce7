package breaker

import "time"

// bucket holds the outcomes of one slice of the rolling window. idx is the
// absolute bucket number (time since the breaker's epoch / bucket width).
type bucket struct {
	idx        int64
	succ, fail uint64
}

// window is the rolling window of the rate rule: windowBuckets buckets of
// width Window/windowBuckets, guarded by the breaker's mutex. Outcomes are
// attributed to the bucket in which they are stamped (failures: when they
// complete; successes: lazily, see Permit.Done).
type window struct {
	epoch time.Time
	width time.Duration
	b     [windowBuckets]bucket
}

func (w *window) index(now time.Time) int64 {
	d := now.Sub(w.epoch)
	if d < 0 {
		d = 0
	}
	return int64(d / w.width)
}

func (w *window) add(now time.Time, succ, fail uint64) {
	i := w.index(now)
	bk := &w.b[i%windowBuckets]
	if bk.idx < i {
		*bk = bucket{idx: i}
	}
	bk.succ += succ
	bk.fail += fail
}

// sum returns the successes+failures and the failures of the buckets that
// are still inside the window at now.
func (w *window) sum(now time.Time) (calls, fails uint64) {
	i := w.index(now)
	for _, bk := range w.b {
		if bk.idx > i-windowBuckets && bk.idx <= i {
			calls += bk.succ + bk.fail
			fails += bk.fail
		}
	}
	return calls, fails
}

func (w *window) clear() { w.b = [windowBuckets]bucket{} }
