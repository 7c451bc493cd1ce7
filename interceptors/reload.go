package interceptors

import "strings"

// Update replaces the suite's policies, validated as by New; on error
// nothing changes. The swap is atomic: a call started before it finishes
// under its policy (its breaker takes the new settings at once), a call
// started after it uses the new one, and no call fails because of it.
//
// Each breaker follows the new policy of its method (with WithBreakerKey: of
// the method that first used its key) and keeps its state and counts; it is
// reconfigured ([breaker.Breaker.Reconfigure]) only if its normalized
// settings changed. A policy that becomes forced open forces its breakers
// open; one that stops being so returns its breakers still forced open to
// its Mode. A breaker whose method no policy covers is dropped: it calls no
// hook again, and calls in flight finish with it. Retry budgets are fixed at
// New and outlive every Update.
//
// Updates are applied one at a time, concurrently with calls. A hook must
// not call Update: a change of Mode calls the hooks during the Update.
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
