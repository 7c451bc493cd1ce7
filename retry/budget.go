package retry

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	stripeof "github.com/khive/grpc-resilience/internal/stripe"
)

// Defaults applied to the zero fields of a BudgetConfig.
const (
	DefaultBudgetRatio         = 0.2
	DefaultMinRetriesPerSecond = 1.0
	DefaultBudgetWindow        = 10 * time.Second
)

const (
	budgetSlots  = 10        // a deposit expires after 9 to 10 slots, i.e. 0.9 to 1 Window
	depositUnits = 1_000_000 // fixed-point scale of one deposit (Finagle's ScaleFactor, finer)
	maxWithdraw  = 1 << 40   // Ratio below ~1e-6 acts as 1e-6 (no retries beyond the reserve)
	maxReserve   = 1 << 60
	flushEvery   = 64 // every 64th deposit of a stripe reads the clock (to rotate the slots)
	maxStripes   = 64 // deposit stripes: a power of two >= 4 × GOMAXPROCS, at most this
	countBits    = 32 // a stripe's pending deposits: the low countBits bits of its word
	countMask    = 1<<countBits - 1
	tagMask      = 1<<31 - 1 // a stripe's epoch tag: (epoch mod 2^31) + 1 in the high bits
)

// BudgetConfig configures a RatioBudget (NewBudget). The zero value means the defaults.
type BudgetConfig struct {
	// Ratio is the retries allowed per deposit (a call whose final outcome is not retryable).
	// 0 = default 0.2; must be in (0, 1000].
	Ratio float64
	// MinRetriesPerSecond is the reserve: MinRetriesPerSecond × Window seconds retries per
	// Window are always allowed. 0 = default 1; negative or not finite is an error.
	MinRetriesPerSecond float64
	// Window is how long deposits (and withdrawals) count: Window/10 slots, 10 of them.
	// 0 = default 10s; otherwise at least 10ms.
	Window time.Duration
}

// Normalize validates c and returns it with each zero field replaced by its default. It
// reports the first invalid field, naming it:
//
//	retry: BudgetConfig.Ratio: must be in (0, 1000], got 1500
func (c BudgetConfig) Normalize() (BudgetConfig, error) {
	switch {
	case math.IsNaN(c.Ratio) || c.Ratio < 0 || c.Ratio > 1000:
		return c, budgetError("BudgetConfig.Ratio", "must be in (0, 1000], got %v", c.Ratio)
	case math.IsNaN(c.MinRetriesPerSecond) || math.IsInf(c.MinRetriesPerSecond, 0) || c.MinRetriesPerSecond < 0:
		return c, budgetError("BudgetConfig.MinRetriesPerSecond", "must be finite and not negative, got %v", c.MinRetriesPerSecond)
	case c.Window < 0 || (c.Window > 0 && c.Window < 10*time.Millisecond):
		return c, budgetError("BudgetConfig.Window", "must be at least 10ms, got %v", c.Window)
	}
	if c.Ratio == 0 {
		c.Ratio = DefaultBudgetRatio
	}
	if c.MinRetriesPerSecond == 0 {
		c.MinRetriesPerSecond = DefaultMinRetriesPerSecond
	}
	if c.Window == 0 {
		c.Window = DefaultBudgetWindow
	}
	return c, nil
}

// Validate reports the first invalid field, as Normalize does.
func (c BudgetConfig) Validate() error {
	_, err := c.Normalize()
	return err
}

func budgetError(field, format string, args ...any) error {
	return fmt.Errorf("retry: "+field+": "+format, args...)
}

// BudgetSnapshot is a point-in-time view of a Budget, for introspection.
type BudgetSnapshot struct {
	// Balance is, for a RatioBudget, the number of retries the budget would allow now (reserve
	// included; it is negative while retries withdrawn against deposits that have since
	// expired, or granted on the credit of retries in flight, are still in the window); for
	// a TokenBucket, the current token count.
	Balance float64
	// Reserve is a RatioBudget's standing reserve in retries per Window (MinRetriesPerSecond ×
	// Window seconds); 0 for a TokenBucket.
	Reserve float64
	// MaxTokens is a TokenBucket's capacity; retries are allowed while Balance > MaxTokens/2.
	// 0 for a RatioBudget.
	MaxTokens float64
	// Allowed and Refused count AllowAt's answers over the budget's life. Refused also counts
	// the retries Call.Next reports as BudgetExhausted without a charge (when the deadline
	// rules the retry out as well).
	Allowed, Refused uint64
}

type pad [64]byte

// stripe holds deposits not yet folded into the slots, on a cache line of its own: the low
// countBits bits count them, the high bits tag the slot epoch they were made in ((epoch mod
// 2^31) + 1; 0 when unknown).
type stripe struct {
	v atomic.Int64
	_ [56]byte
}

// Budget limits the retries of one target: a [*RatioBudget] (NewBudget) or a [*TokenBucket]
// (NewTokenBucket). Both are safe for concurrent use; a nil Budget, or a nil pointer of either
// type, allows every retry and records nothing. [Call] and [Do] drive it; callers that do not
// use them report each call's outcome with Succeeded or NotRetryable, each retryable failed
// attempt with FailedAt, and ask AllowAt before each retry.
type Budget interface {
	// AllowAt reports whether a retry may start at now, and charges it.
	AllowAt(now time.Time) bool
	// FailedAt records that a retryable attempt failed at now.
	FailedAt(now time.Time)
	// Succeeded records a successful call; retried says whether it took more than one attempt.
	Succeeded(retried bool)
	// NotRetryable records a call that ended with a non-retryable error.
	NotRetryable()
	// Snapshot returns the budget's current state.
	Snapshot() BudgetSnapshot

	// For Call: allowRetry is AllowAt for a retry that stays in flight until settle;
	// wouldAllow is allowRetry without the charge (a refusal is counted); refund gives back
	// the charge of a retry granted but never begun.
	allowRetry(now time.Time) bool
	wouldAllow(now time.Time) bool
	settle()
	refund()
}

// RatioBudget is the Finagle/tower-style budget with expiring deposits (see the package
// documentation for the rule and its bounds). Methods whose name ends in At take the time;
// the others read the clock (time.Now): Succeeded and NotRetryable only on every 64th deposit
// of a stripe, so that the success path reads no clock.
//
// Deposits are striped: Succeeded and NotRetryable add to one of several counters (a power of
// two at least 4 × GOMAXPROCS, at most 64, each on its own cache line, chosen by a hash of the
// goroutine's stack address). A stripe's pending deposits carry the epoch the slots were last
// rotated to when they were made, never a later one, so a deposit never outlives its Window.
// They are folded into that epoch's slot when the stripe next meets a new epoch, when the
// balance is short at AllowAt, and at Snapshot; the balance is exact at rest. Under
// concurrency, a count that races a slot rotation may land in the neighbouring slot.
type RatioBudget struct {
	// Read-mostly: configuration, and the rotation state (written once per slot).
	withdraw int64 // units per retry
	reserve  int64
	origin   time.Time
	slot     time.Duration
	clock    func() time.Time // time.Now; tests replace it
	stripes  []stripe         // deposits not yet folded
	mask     uint32           // len(stripes) - 1
	epoch    atomic.Int64     // slot epoch the slots were last rotated to
	next     atomic.Int64     // offset from origin (ns) where the epoch after it begins
	// total starts a cache line, which the first slots' wslots share: the allocation
	// (640 bytes, line-aligned) begins with the runtime's 8-byte header, so the struct
	// starts 8 bytes into a line. TestRatioBudgetLayout checks the address.
	_ [80]byte

	total    atomic.Int64              // reserve + sum(slots) - withdraw × sum(wslots), in units
	inflight atomic.Int64              // retries granted by Call.Next whose attempt has not ended
	wsum     atomic.Int64              // sum(wslots)
	rsum     atomic.Int64              // sum(rslots)
	wslots   [budgetSlots]atomic.Int64 // retries allowed (withdrawals) per slot
	rslots   [budgetSlots]atomic.Int64 // retries that succeeded (refunds) per slot
	_        pad
	slots    [budgetSlots]atomic.Int64 // deposits and refunds per slot, in units
	_        pad

	refused atomic.Uint64
	retired atomic.Uint64 // withdrawals of expired slots
	mu      sync.Mutex    // serializes slot rotation
}

// NewBudget returns a RatioBudget. It returns an error naming the field if cfg is invalid.
func NewBudget(cfg BudgetConfig) (*RatioBudget, error) {
	cfg, err := cfg.Normalize()
	if err != nil {
		return nil, err
	}
	w := math.Round(depositUnits / cfg.Ratio)
	w = min(max(w, 1), maxWithdraw)
	reserve := min(cfg.MinRetriesPerSecond*cfg.Window.Seconds()*w, maxReserve)
	n := stripeof.Count(maxStripes)
	b := &RatioBudget{
		withdraw: int64(w),
		reserve:  int64(reserve),
		slot:     cfg.Window / budgetSlots,
		clock:    time.Now,
		stripes:  make([]stripe, n),
		mask:     uint32(n - 1),
	}
	for i := range b.stripes {
		b.stripes[i].v.Store(1 << countBits) // epoch 0
	}
	b.origin = b.clock()
	b.total.Store(b.reserve)
	b.next.Store(int64(b.slot))
	return b, nil
}

// Allow is AllowAt(time.Now()).
func (b *RatioBudget) Allow() bool {
	if b == nil {
		return true
	}
	return b.AllowAt(b.clock())
}

// AllowAt reports whether a retry may start at now, and charges it: it withdraws one retry
// (1/Ratio deposits) if the balance covers it.
func (b *RatioBudget) AllowAt(now time.Time) bool {
	if b == nil {
		return true
	}
	return b.allow(now, false)
}

func (b *RatioBudget) allowRetry(now time.Time) bool {
	if b == nil {
		return true
	}
	return b.allow(now, true)
}

// allow withdraws a retry if the balance covers it; with inflight, the other retries in
// flight count at their expected refund (credit) and the retry is counted in flight.
func (b *RatioBudget) allow(now time.Time, inflight bool) bool {
	e := b.sync(now, true)
	var credit int64
	if inflight {
		credit = b.credit()
	}
	folded := false
	for {
		t := b.total.Load()
		if t+credit < b.withdraw {
			if !folded { // deposits may be pending in the stripes
				b.foldAll(e)
				folded = true
				continue
			}
			b.refused.Add(1)
			return false
		}
		if b.total.CompareAndSwap(t, t-b.withdraw) {
			break
		}
	}
	b.wslots[e%budgetSlots].Add(1)
	b.wsum.Add(1)
	if inflight {
		b.inflight.Add(1)
	}
	return true
}

// credit returns, in units, what the retries in flight are expected to refund:
// min(inflight × withdraw × q, reserve), q = (refunds + 4) / (settled + 8) over the Window,
// at most 1 (settled: the Window's retries less those in flight).
func (b *RatioBudget) credit() int64 {
	n := b.inflight.Load()
	if n <= 0 {
		return 0
	}
	r, settled := max(b.rsum.Load(), 0), max(b.wsum.Load()-n, 0)
	q := min(float64(r+4)/float64(settled+8), 1)
	return int64(min(float64(n)*float64(b.withdraw)*q, float64(b.reserve)))
}

func (b *RatioBudget) settle() {
	if b != nil {
		b.inflight.Add(-1)
	}
}

func (b *RatioBudget) wouldAllow(now time.Time) bool {
	if b == nil {
		return true
	}
	e := b.sync(now, true)
	c := b.credit()
	ok := b.total.Load()+c >= b.withdraw
	if !ok {
		b.foldAll(e)
		ok = b.total.Load()+c >= b.withdraw
	}
	if !ok {
		b.refused.Add(1)
	}
	return ok
}

// FailedAt does nothing: a RatioBudget counts calls, not failed attempts.
func (b *RatioBudget) FailedAt(time.Time) {}

// Succeeded records a successful call: a deposit, plus a refund of one withdrawal if retried.
// Succeeded(false) takes no mutex, writes only its deposit stripe and reads the clock on every
// 64th deposit of the stripe only.
func (b *RatioBudget) Succeeded(retried bool) {
	if b == nil {
		return
	}
	b.deposit()
	if retried {
		b.refundUnits(true)
	}
}

// NotRetryable records a call that ended with a non-retryable error: a deposit (the target
// answered), as Succeeded(false).
func (b *RatioBudget) NotRetryable() {
	if b != nil {
		b.deposit()
	}
}

// deposit adds one deposit to the caller's stripe, tagged with the current epoch. A stripe holding
// deposits of an older epoch first has them folded into that epoch's slot.
func (b *RatioBudget) deposit() {
	s := &b.stripes[stripeof.Index()&b.mask]
	tag := (b.epoch.Load()&tagMask + 1) << countBits
	if v := s.v.Load(); v&^countMask != tag && s.v.CompareAndSwap(v, tag|1) {
		b.fold(v, b.epoch.Load()) // the stripe's deposits of an older epoch
		return
	}
	// (A lost race adds to the tag the stripe has now: at worst an older epoch.)
	if v := s.v.Add(1); v&(flushEvery-1) == 0 { // every 64th deposit of the stripe
		b.sync(b.clock(), false)
		if v&countMask >= 1<<(countBits-2) { // keep the count clear of the tag bits
			b.fold(s.v.And(^countMask), b.epoch.Load())
		}
	}
}

// fold adds the deposits of a stripe word x (swapped out of its stripe) to the slot of the
// epoch they were made in, cur being the current epoch; deposits of an epoch whose slot has
// expired are dropped, as the rotation would have expired them. An untagged word, or one
// tagged later than cur (a rotation raced the caller), goes to cur's slot.
func (b *RatioBudget) fold(x, cur int64) {
	n := x & countMask
	if n == 0 {
		return
	}
	e := cur
	if t := x >> countBits; t != 0 {
		if age := (cur - (t - 1)) & tagMask; age <= tagMask/2 {
			if age >= budgetSlots {
				return
			}
			e = cur - age
		}
	}
	units := n * depositUnits
	b.slots[e%budgetSlots].Add(units)
	b.total.Add(units)
}

// foldAll folds every stripe's pending deposits (cur is the current epoch).
func (b *RatioBudget) foldAll(cur int64) {
	for i := range b.stripes {
		if s := &b.stripes[i]; s.v.Load()&countMask != 0 {
			b.fold(s.v.And(^countMask), cur)
		}
	}
}

// refund gives back one withdrawal (a retry granted but never started).
func (b *RatioBudget) refund() {
	if b != nil {
		b.refundUnits(false)
	}
}

// refundUnits gives back one withdrawal into the current slot; succeeded counts it as a retry
// that succeeded (for the in-flight credit).
func (b *RatioBudget) refundUnits(succeeded bool) {
	cur := b.epoch.Load()
	b.slots[cur%budgetSlots].Add(b.withdraw)
	b.total.Add(b.withdraw)
	if succeeded {
		b.rslots[cur%budgetSlots].Add(1)
		b.rsum.Add(1)
	}
}

// epochOf returns the slot epoch of an offset from the origin: floor(off / slot).
func (b *RatioBudget) epochOf(off time.Duration) int64 {
	e := int64(off / b.slot)
	if off < 0 && off%b.slot != 0 {
		e--
	}
	return e
}

// sync rotates the slots to now's epoch (a now older than the last rotation counts as that
// epoch). With block false it never waits for the rotation lock: if another goroutine is
// rotating, it skips the rotation. It returns the current epoch. Within an epoch it costs a
// subtraction and two atomic loads.
func (b *RatioBudget) sync(now time.Time, block bool) int64 {
	if off := now.Sub(b.origin); int64(off) >= b.next.Load() {
		if block {
			b.mu.Lock()
			b.rotate(b.epochOf(off))
			b.mu.Unlock()
		} else if b.mu.TryLock() {
			b.rotate(b.epochOf(off))
			b.mu.Unlock()
		}
	}
	return b.epoch.Load()
}

// rotate clears the slots of the epochs after the current one up to e (at most all 10), then
// publishes e (epoch first, then next, so that a reader who skips the rotation on the new
// next sees the new epoch). Callers hold b.mu.
func (b *RatioBudget) rotate(e int64) {
	cur := b.epoch.Load()
	if e <= cur {
		return
	}
	n := min(e-cur, budgetSlots)
	for k := int64(1); k <= n; k++ {
		i := (cur + k) % budgetSlots
		v := b.slots[i].Swap(0)
		w := b.wslots[i].Swap(0)
		r := b.rslots[i].Swap(0)
		b.total.Add(w*b.withdraw - v)
		b.wsum.Add(-w)
		b.rsum.Add(-r)
		b.retired.Add(uint64(w))
	}
	b.epoch.Store(e)
	next := int64(math.MaxInt64)
	if e < math.MaxInt64/int64(b.slot)-1 {
		next = (e + 1) * int64(b.slot)
	}
	b.next.Store(next)
}

// Snapshot is SnapshotAt(time.Now()).
func (b *RatioBudget) Snapshot() BudgetSnapshot {
	if b == nil {
		return BudgetSnapshot{}
	}
	return b.SnapshotAt(b.clock())
}

// SnapshotAt returns the budget's state at now (it folds pending deposits).
func (b *RatioBudget) SnapshotAt(now time.Time) BudgetSnapshot {
	if b == nil {
		return BudgetSnapshot{}
	}
	b.foldAll(b.sync(now, true))
	s := BudgetSnapshot{
		Balance: float64(b.total.Load()) / float64(b.withdraw),
		Reserve: float64(b.reserve) / float64(b.withdraw),
		Allowed: b.retired.Load(), // and the withdrawals of the live slots:
		Refused: b.refused.Load(),
	}
	for i := range b.wslots {
		s.Allowed += uint64(b.wslots[i].Load())
	}
	return s
}
