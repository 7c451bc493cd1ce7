package breaker

import (
	"slices"
	"sync"
)

// Group holds one Breaker per key (for example one per gRPC method), all
// with the same Config except Name, which is set to the key. It is safe for
// concurrent use, including the first use of a key: however many goroutines
// race, they all get the same Breaker for a key.
type Group struct {
	cfg      Config
	breakers sync.Map // string -> *Breaker
}

// NewGroup returns a Group, or the validation error of cfg.
func NewGroup(cfg Config) (*Group, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Group{cfg: cfg}, nil
}

// Get returns the Breaker for key, creating it on first use.
func (g *Group) Get(key string) *Breaker {
	if b, ok := g.breakers.Load(key); ok {
		return b.(*Breaker)
	}
	cfg := g.cfg
	cfg.Name = key
	nb, _ := New(cfg) // cfg was validated by NewGroup
	// Goroutines racing on a new key each build a Breaker, but only the
	// first one stored is ever returned; the others are garbage before
	// anyone can use them (a new Breaker holds no timer).
	b, _ := g.breakers.LoadOrStore(key, nb)
	return b.(*Breaker)
}

// Range calls f for each Breaker of the group, in key order, until f
// returns false.
func (g *Group) Range(f func(key string, b *Breaker) bool) {
	var keys []string
	g.breakers.Range(func(k, _ any) bool {
		keys = append(keys, k.(string))
		return true
	})
	slices.Sort(keys)
	for _, k := range keys {
		b, _ := g.breakers.Load(k)
		if !f(k, b.(*Breaker)) {
			return
		}
	}
}

// Config returns the Config the group was created with.
func (g *Group) Config() Config { return g.cfg }
