package retry

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
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
	flushEvery   = 16 // Succeeded/NotRetryable read the clock on every 16th deposit only
	refundOne    = 1 << 32
)

// BudgetConfig configures a ratio-mode Budget (NewBudget). The zero value means the defaults.
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

func (c BudgetConfig) withDefaults() BudgetConfig {
	if c.Ratio == 0 {
		c.Ratio = DefaultBudgetRatio
	}
	if c.MinRetriesPerSecond == 0 {
		c.MinRetriesPerSecond = DefaultMinRetriesPerSecond
	}
	if c.Window == 0 {
		c.Window = DefaultBudgetWindow
	}
	return c
}

// Validate reports the first invalid field, naming it:
//
//	retry: BudgetConfig.Ratio: must be in (0, 1000], got 1500
func (c BudgetConfig) Validate() error {
	switch {
	case math.IsNaN(c.Ratio) || c.Ratio < 0 || c.Ratio > 1000:
		return budgetError("BudgetConfig.Ratio", "must be in (0, 1000], got %v", c.Ratio)
	case math.IsNaN(c.MinRetriesPerSecond) || math.IsInf(c.MinRetriesPerSecond, 0) || c.MinRetriesPerSecond < 0:
		return budgetError("BudgetConfig.MinRetriesPerSecond", "must be finite and not negative, got %v", c.MinRetriesPerSecond)
	case c.Window < 0 || (c.Window > 0 && c.Window < 10*time.Millisecond):
		return budgetError("BudgetConfig.Window", "must be at least 10ms, got %v", c.Window)
	}
	return nil
}

func budgetError(field, format string, args ...any) error {
	return fmt.Errorf("retry: "+field+": "+format, args...)
}

// BudgetMode tells the two kinds of Budget apart.
type BudgetMode uint8

const (
	// RatioMode is the Finagle/tower-style budget with expiring deposits (NewBudget).
	RatioMode BudgetMode = iota + 1
	// TokenBucketMode is gRFC A6 retryThrottling (NewTokenBucket).
	TokenBucketMode
)

// String returns "ratio" or "token-bucket".
func (m BudgetMode) String() string {
	switch m {
	case RatioMode:
		return "ratio"
	case TokenBucketMode:
		return "token-bucket"
	}
	return "BudgetMode(" + strconv.Itoa(int(m)) + ")"
}

// BudgetSnapshot is a point-in-time view of a Budget, for introspection.
type BudgetSnapshot struct {
	// Mode is RatioMode or TokenBucketMode.
	Mode BudgetMode
	// Balance is, in RatioMode, the number of retries the budget would allow now (reserve
	// included; it is negative while retries withdrawn against deposits that have since
	// expired are still in the window); in TokenBucketMode, the current token count.
	Balance float64
	// Reserve is the standing RatioMode reserve in retries per Window (MinRetriesPerSecond ×
	// Window seconds); 0 in TokenBucketMode.
	Reserve float64
	// MaxTokens is the TokenBucketMode capacity; retries are allowed while Balance > MaxTokens/2.
	// 0 in RatioMode.
	MaxTokens float64
	// Allowed and Refused count Allow's answers over the budget's life. Refused also counts
	// the retries Call.Next reports as BudgetExhausted without calling Allow (when the
	// deadline rules the retry out as well).
	Allowed, Refused uint64
}

type pad [64]byte

// Budget limits retries for one target; it is safe for concurrent use. A nil *Budget allows
// every retry and records nothing.
//
// RatioMode (NewBudget): a deposit is made by each call whose final outcome is not retryable
// (Succeeded, NotRetryable); each retry withdraws 1/Ratio deposits (Allow); a retry that
// succeeds refunds its withdrawal (Succeeded(true)). Deposits and withdrawals expire after
// Window (10 slots). A standing reserve of MinRetriesPerSecond × Window seconds retries is
// always available. Deposits are counted lazily: Succeeded and NotRetryable only add to a
// pending counter (atomic, no clock, no mutex) and every 16th one, like every Allow, flushes
// the pending deposits into the current slot; so up to 15 deposits are counted late and may
// outlive their Window. Under concurrency, a deposit or withdrawal that races a slot rotation
// may land in the neighbouring slot, and a few more deposits (one per racing goroutine) may be
// pending at a flush; the balance itself stays exact (every deposit, refund and withdrawal is
// counted once).
//
// TokenBucketMode (NewTokenBucket): gRFC A6 retryThrottling; see NewTokenBucket.
type Budget struct {
	// Read-mostly: configuration, and the rotation state (written once per slot).
	mode                  BudgetMode
	withdraw              int64 // units per retry
	reserve               int64
	origin                time.Time
	slot                  time.Duration
	clock                 func() time.Time // time.Now; tests replace it
	maxTokens, tokenRatio int64            // TokenBucketMode, thousandths
	epoch                 atomic.Int64     // slot epoch the slots were last rotated to
	next                  atomic.Int64     // offset from origin (ns) where the epoch after it begins
	_                     pad

	pend atomic.Int64 // pending deposits (low 32 bits) and refunds (high 32 bits)
	_    pad

	total  atomic.Int64              // reserve + sum(slots) - withdraw × sum(wslots), in units
	wslots [budgetSlots]atomic.Int64 // retries allowed (withdrawals) per slot
	_      pad
	slots  [budgetSlots]atomic.Int64 // deposits and refunds per slot, in units
	_      pad

	tokens atomic.Int64 // TokenBucketMode: thousandths of a token
	_      pad

	allowed atomic.Uint64 // TokenBucketMode; RatioMode: retired + sum(wslots)
	refused atomic.Uint64
	retired atomic.Uint64 // withdrawals of expired slots
	mu      sync.Mutex    // serializes slot rotation
}

// NewBudget returns a ratio-mode Budget. It returns an error naming the field if cfg is invalid.
func NewBudget(cfg BudgetConfig) (*Budget, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	w := math.Round(depositUnits / cfg.Ratio)
	w = min(max(w, 1), maxWithdraw)
	reserve := min(cfg.MinRetriesPerSecond*cfg.Window.Seconds()*w, maxReserve)
	b := &Budget{
		mode:     RatioMode,
		withdraw: int64(w),
		reserve:  int64(reserve),
		slot:     cfg.Window / budgetSlots,
		clock:    time.Now,
	}
	b.origin = b.clock()
	b.total.Store(b.reserve)
	b.next.Store(int64(b.slot))
	return b, nil
}

// NewTokenBucket returns a Budget in gRFC A6 retryThrottling mode. The token count starts at
// maxTokens; each retryable failed attempt (Failed) costs 1 token; each successful call
// (Succeeded) adds tokenRatio; the count stays within [0, maxTokens]; a retry is allowed while
// tokens > maxTokens/2 (Allow charges nothing). Tokens are kept in thousandths, as A6 keeps
// tokenRatio to three decimals, so the arithmetic is exact. maxTokens must be in (0, 1000] and
// tokenRatio at least 0.001.
func NewTokenBucket(maxTokens, tokenRatio float64) (*Budget, error) {
	if math.IsNaN(maxTokens) || maxTokens <= 0 || maxTokens > 1000 {
		return nil, budgetError("NewTokenBucket maxTokens", "must be in (0, 1000], got %v", maxTokens)
	}
	if math.IsNaN(tokenRatio) || tokenRatio < 0.001 || math.IsInf(tokenRatio, 0) {
		return nil, budgetError("NewTokenBucket tokenRatio", "must be finite and at least 0.001, got %v", tokenRatio)
	}
	b := &Budget{
		mode:       TokenBucketMode,
		maxTokens:  int64(math.Round(maxTokens * 1000)),
		tokenRatio: int64(math.Round(min(tokenRatio, 1000) * 1000)),
		clock:      time.Now,
	}
	b.tokens.Store(b.maxTokens)
	return b, nil
}

// Mode returns the budget's mode.
func (b *Budget) Mode() BudgetMode { return b.mode }

// Allow reports whether a retry may start at now, and charges it. RatioMode withdraws one
// retry (1/Ratio deposits) if the balance covers it; TokenBucketMode allows while
// tokens > maxTokens/2 and charges nothing (the failed attempt was charged by Failed).
func (b *Budget) Allow(now time.Time) bool {
	if b == nil {
		return true
	}
	if b.mode == TokenBucketMode {
		if 2*b.tokens.Load() > b.maxTokens {
			b.allowed.Add(1)
			return true
		}
		b.refused.Add(1)
		return false
	}
	e := b.sync(now, true)
	for {
		t := b.total.Load()
		if t < b.withdraw {
			b.refused.Add(1)
			return false
		}
		if b.total.CompareAndSwap(t, t-b.withdraw) {
			break
		}
	}
	b.wslots[e%budgetSlots].Add(1)
	return true
}

// wouldAllow is Allow without the charge; a refusal is counted.
func (b *Budget) wouldAllow(now time.Time) bool {
	if b == nil {
		return true
	}
	ok := false
	if b.mode == TokenBucketMode {
		ok = 2*b.tokens.Load() > b.maxTokens
	} else {
		b.sync(now, true)
		ok = b.total.Load() >= b.withdraw
	}
	if !ok {
		b.refused.Add(1)
	}
	return ok
}

// Failed records that a retryable attempt failed. TokenBucketMode: tokens -= 1 (not below 0).
// RatioMode: nothing.
func (b *Budget) Failed(now time.Time) {
	if b == nil || b.mode != TokenBucketMode {
		return
	}
	for {
		t := b.tokens.Load()
		if t <= 0 {
			return
		}
		if b.tokens.CompareAndSwap(t, max(t-1000, 0)) {
			return
		}
	}
}

// Succeeded records a successful call; retried says whether it took more than one attempt.
// RatioMode: a deposit, plus a refund of one withdrawal if retried. TokenBucketMode:
// tokens += tokenRatio (not above maxTokens). It reads no clock except for the amortized flush
// on every 16th deposit, and takes no mutex.
func (b *Budget) Succeeded(retried bool) {
	if b == nil {
		return
	}
	if b.mode == TokenBucketMode {
		for {
			t := b.tokens.Load()
			if t >= b.maxTokens {
				return
			}
			if b.tokens.CompareAndSwap(t, min(t+b.tokenRatio, b.maxTokens)) {
				return
			}
		}
	}
	var d int64 = 1
	if retried {
		d += refundOne
	}
	b.deposit(d)
}

// NotRetryable records a call that ended with a non-retryable error. RatioMode: a deposit
// (the target answered). TokenBucketMode: nothing.
func (b *Budget) NotRetryable() {
	if b == nil || b.mode == TokenBucketMode {
		return
	}
	b.deposit(1)
}

func (b *Budget) deposit(d int64) {
	if b.pend.Add(d)&(flushEvery-1) == 0 {
		b.sync(b.clock(), false)
	}
}

// refund gives back one withdrawal (a retry granted but never started).
func (b *Budget) refund() {
	if b == nil || b.mode == TokenBucketMode {
		return
	}
	b.pend.Add(refundOne)
}

// epochOf returns the slot epoch of an offset from the origin: floor(off / slot).
func (b *Budget) epochOf(off time.Duration) int64 {
	e := int64(off / b.slot)
	if off < 0 && off%b.slot != 0 {
		e--
	}
	return e
}

// sync rotates the slots to now's epoch (a now older than the last rotation counts as that
// epoch) and moves the pending deposits and refunds into the current slot. With block false it
// never waits for the rotation lock: if another goroutine is rotating, it skips the rotation.
// It returns the current epoch. Within an epoch it costs a subtraction and two atomic loads.
func (b *Budget) sync(now time.Time, block bool) int64 {
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
	cur := b.epoch.Load()
	if b.pend.Load() != 0 {
		v := uint64(b.pend.Swap(0))
		units := int64(uint32(v))*depositUnits + int64(v>>32)*b.withdraw
		b.slots[cur%budgetSlots].Add(units)
		b.total.Add(units)
	}
	return cur
}

// rotate clears the slots of the epochs after the current one up to e (at most all 10), then
// publishes e (epoch first, then next, so that a reader who skips the rotation on the new
// next sees the new epoch). Callers hold b.mu.
func (b *Budget) rotate(e int64) {
	cur := b.epoch.Load()
	if e <= cur {
		return
	}
	n := min(e-cur, budgetSlots)
	for k := int64(1); k <= n; k++ {
		i := (cur + k) % budgetSlots
		v := b.slots[i].Swap(0)
		w := b.wslots[i].Swap(0)
		b.total.Add(w*b.withdraw - v)
		b.retired.Add(uint64(w))
	}
	b.epoch.Store(e)
	next := int64(math.MaxInt64)
	if e < math.MaxInt64/int64(b.slot)-1 {
		next = (e + 1) * int64(b.slot)
	}
	b.next.Store(next)
}

// Snapshot returns the budget's current state (it reads the clock and flushes pending deposits).
func (b *Budget) Snapshot() BudgetSnapshot {
	if b == nil {
		return BudgetSnapshot{}
	}
	s := BudgetSnapshot{Mode: b.mode, Refused: b.refused.Load()}
	if b.mode == TokenBucketMode {
		s.Balance = float64(b.tokens.Load()) / 1000
		s.MaxTokens = float64(b.maxTokens) / 1000
		s.Allowed = b.allowed.Load()
		return s
	}
	b.sync(b.clock(), true)
	s.Balance = float64(b.total.Load()) / float64(b.withdraw)
	s.Reserve = float64(b.reserve) / float64(b.withdraw)
	// Ratio mode keeps no allowed counter of its own: Allow's withdrawals are counted per slot.
	s.Allowed = b.retired.Load()
	for i := range b.wslots {
		s.Allowed += uint64(b.wslots[i].Load())
	}
	return s
}
