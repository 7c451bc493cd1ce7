package breaker

import (
	"slices"
	"sync"
)

// Group holds one Breaker per key (for example one per gRPC method), all
// with the same Config except Name, which is set to the key. It is safe for
// concurrent use, including the first use of a key: however many goroutines
// race, exactly one Breaker is created per key.
type Group struct {
	cfg      Config
	mu       sync.Mutex // serializes creation
	breakers sync.Map   // string -> *Breaker
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
	g.mu.Lock()
	defer g.mu.Unlock()
	if b, ok := g.breakers.Load(key); ok {
		return b.(*Breaker)
	}
	cfg := g.cfg
	cfg.Name = key
	b, _ := New(cfg) // cfg was validated by NewGroup
	g.breakers.Store(key, b)
	return b
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
