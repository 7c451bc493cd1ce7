package interceptors

import "strings"

// Update replaces the suite's policies with policies, validated as New
// validates them; on error nothing changes. The swap is atomic: a call or
// stream started before it finishes under the policy it started with (its
// retries, classification and fallback; its breaker takes the new breaker
// settings at once, as every breaker does), and every call started after it
// uses the new policies. No call fails because of an Update.
//
// State is kept:
//
//   - Breakers: each breaker takes the breaker settings of the new policy of
//     its method (with WithBreakerKey: of the method that first used its
//     key) and keeps its state and counts: an open breaker stays open for
//     the rest of its open period, a half-open one keeps its probes, a
//     closed one its statistics (its rolling window is cleared only if
//     Window changed). A change of Mode (Closed, Disabled, MetricsOnly)
//     switches the breaker to that mode; a policy that becomes forced open
//     (Breaker.Mode breaker.ForcedOpen) isolates its breakers, and one that
//     stops being forced open switches its breakers still forced open to
//     its Mode (a breaker that SetMode forced open under another policy
//     stays so). A breaker whose method no policy
//     covers any more is dropped: it never calls a hook again, and a call
//     still in flight finishes with it.
//   - Retry budgets are never reset: the budget settings (WithBudget,
//     WithTokenBucket, WithoutBudget) are fixed at New, and each target's
//     budget, with its deposits or tokens, outlives every Update. To change
//     the budget settings, build a new Suite.
//
// Updates may run concurrently with calls and with each other (they are
// applied one at a time; the last one wins). A hook (WithOnStateChange,
// Breaker.OnStateChange) must not call Update: a change of Mode calls the
// hooks during the Update.
func (s *Suite) Update(policies map[string]Policy) error {
	tab, errs := s.resolve(policies)
	if errs != nil {
		return joinErrors(errs)
	}
	s.umu.Lock()
	defer s.umu.Unlock()
	s.reg.mu.Lock()
	s.tab.Store(tab)
	todo := s.reg.reconfigure(tab)
	s.reg.mu.Unlock()
	for _, r := range todo {
		r.apply()
	}
	return nil
}

// policy returns the policy stored under key, or nil.
func (t *table) policy(key string) *policy {
	switch {
	case key == "*":
		return t.star
	case strings.HasSuffix(key, "/*"):
		return t.service[key[:len(key)-1]]
	default:
		return t.exact[key]
	}
}
