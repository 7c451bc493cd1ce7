package retry

import (
	"math"
	"sync/atomic"
	"time"
)

// TokenBucket is gRFC A6 retryThrottling, as in grpc-go. It has no clock: the At forms
// ignore now.
type TokenBucket struct {
	maxTokens, tokenRatio int64 // thousandths
	_                     pad
	tokens                atomic.Int64 // thousandths of a token
	_                     pad          // every AllowAt writes a counter: not on the lines it reads
	allowed, refused      atomic.Uint64
}

// NewTokenBucket returns a TokenBucket. The token count starts at maxTokens; each retryable
// failed attempt (FailedAt) costs 1 token; each successful call (Succeeded) adds tokenRatio;
// the count stays within [0, maxTokens]; a retry is allowed while tokens > maxTokens/2
// (AllowAt charges nothing). Tokens are kept in thousandths, as A6 keeps tokenRatio to three
// decimals, so the arithmetic is exact. maxTokens must be in (0, 1000] and tokenRatio at
// least 0.001.
func NewTokenBucket(maxTokens, tokenRatio float64) (*TokenBucket, error) {
	if math.IsNaN(maxTokens) || maxTokens <= 0 || maxTokens > 1000 {
		return nil, budgetError("NewTokenBucket maxTokens", "must be in (0, 1000], got %v", maxTokens)
	}
	if math.IsNaN(tokenRatio) || tokenRatio < 0.001 || math.IsInf(tokenRatio, 0) {
		return nil, budgetError("NewTokenBucket tokenRatio", "must be finite and at least 0.001, got %v", tokenRatio)
	}
	b := &TokenBucket{
		maxTokens:  int64(math.Round(maxTokens * 1000)),
		tokenRatio: int64(math.Round(min(tokenRatio, 1000) * 1000)),
	}
	b.tokens.Store(b.maxTokens)
	return b, nil
}

// AllowAt reports whether tokens > maxTokens/2; it charges nothing.
func (b *TokenBucket) AllowAt(time.Time) bool {
	if b == nil {
		return true
	}
	if b.wouldAllow(time.Time{}) {
		b.allowed.Add(1)
		return true
	}
	return false
}

func (b *TokenBucket) allowRetry(now time.Time) bool { return b.AllowAt(now) }

func (b *TokenBucket) wouldAllow(time.Time) bool {
	if b == nil {
		return true
	}
	if 2*b.tokens.Load() > b.maxTokens {
		return true
	}
	b.refused.Add(1)
	return false
}

func (b *TokenBucket) settle() {}
func (b *TokenBucket) refund() {}

// FailedAt takes one token (not below 0).
func (b *TokenBucket) FailedAt(time.Time) {
	if b != nil {
		b.add(-1000)
	}
}

// Succeeded adds tokenRatio tokens (not above maxTokens).
func (b *TokenBucket) Succeeded(bool) {
	if b != nil {
		b.add(b.tokenRatio)
	}
}

// NotRetryable does nothing.
func (b *TokenBucket) NotRetryable() {}

// add adds d thousandths of a token, keeping the count within [0, maxTokens].
func (b *TokenBucket) add(d int64) {
	for {
		t := b.tokens.Load()
		n := min(max(t+d, 0), b.maxTokens)
		if n == t || b.tokens.CompareAndSwap(t, n) {
			return
		}
	}
}

// Snapshot returns the token count, the capacity and the answers of AllowAt.
func (b *TokenBucket) Snapshot() BudgetSnapshot {
	if b == nil {
		return BudgetSnapshot{}
	}
	return BudgetSnapshot{
		Balance:   float64(b.tokens.Load()) / 1000,
		MaxTokens: float64(b.maxTokens) / 1000,
		Allowed:   b.allowed.Load(),
		Refused:   b.refused.Load(),
	}
}
