package breaker

import "time"

// tally is what the rolling window counts: accepted calls (a successful
// attempt ends its call), failed attempts, failed calls and throttled calls.
type tally struct {
	succ, fail, callFail, thr uint64
}

func (t *tally) add(u tally) {
	t.succ += u.succ
	t.fail += u.fail
	t.callFail += u.callFail
	t.thr += u.thr
}

// bucket holds the tally of one slice of the rolling window. idx is the
// absolute bucket number (time since the breaker's epoch / bucket width).
type bucket struct {
	idx int64
	tally
}

// window is the rolling window of the throttle and the rate rule:
// windowBuckets buckets of width Window/windowBuckets, guarded by the
// breaker's mutex. Outcomes are attributed to the bucket in which they are
// stamped (failures when they complete, fast-path counts when folded).
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

func (w *window) add(now time.Time, u tally) {
	i := w.index(now)
	bk := &w.b[i%windowBuckets]
	if bk.idx < i {
		*bk = bucket{idx: i}
	}
	bk.add(u)
}

// sum returns the tally of the buckets still inside the window at now.
func (w *window) sum(now time.Time) (t tally) {
	i := w.index(now)
	for _, bk := range w.b {
		if bk.idx > i-windowBuckets && bk.idx <= i {
			t.add(bk.tally)
		}
	}
	return t
}

func (w *window) clear() { w.b = [windowBuckets]bucket{} }
