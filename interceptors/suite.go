package interceptors

import (
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"google.golang.org/grpc"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// healthPrefix is the service of the standard health check, which the "*"
// policy never covers: probes must see the real state of the server.
const healthPrefix = "/grpc.health.v1.Health/"

// maxCachedMethods bounds the per-target cache of resolved methods; methods
// beyond it are resolved on every call (still without allocating).
const maxCachedMethods = 4096

// Suite holds the policies of a set of methods and the state behind them (one
// circuit breaker per method, one retry budget per target). Create it with New
// and install it on a grpc.ClientConn with DialOptions (or Unary and Stream).
// A Suite is safe for concurrent use and may serve several connections.
type Suite struct {
	tab atomic.Pointer[table] // the resolved policies; swapped whole (a later Update)
	o   options               // immutable after New

	headers []*mdHolder // prebuilt attempt-header metadata (see retryContext)

	// budgets holds one retry budget per target (string -> *retry.Budget).
	// It lives outside the table so that a table swap keeps the budgets.
	budgets sync.Map
}

// table is the immutable resolved form of a policy map, plus the caches of
// the entries resolved from it. Replacing s.tab drops every cache at once.
type table struct {
	exact   map[string]*policy // "/pkg.Svc/Method"
	service map[string]*policy // "/pkg.Svc/" (the key without its "*")
	star    *policy            // "*", or nil

	last    atomic.Pointer[target] // the target of the latest call
	targets sync.Map               // target name -> *target
}

// target is the per-target part of a table: the budget and the cache of the
// entries of the methods called on that target.
type target struct {
	name   string
	budget *retry.Budget
	// fast is a direct-mapped cache indexed by the address of the method
	// string's bytes: generated stubs pass the same constant string on every
	// call, so a hit is a pointer hash, one atomic load and a string
	// comparison that succeeds on pointer equality. A slot holds its
	// entry's method string, so the bytes it was indexed by stay alive.
	fast    [fastSlots]atomic.Pointer[entry]
	entries atomic.Pointer[map[string]*entry] // copy on write, every resolved method
	mu      sync.Mutex                        // serializes writers of entries
}

// fastSlots is the size of target.fast (a power of two).
const fastSlots = 64

// fastSlot returns the index of method in target.fast.
func fastSlot(method string) uintptr {
	h := uintptr(unsafe.Pointer(unsafe.StringData(method)))
	return (h * 0x9E3779B97F4A7C15) >> (64 - 6) & (fastSlots - 1)
}

// entry is what one method on one target resolves to: the policy, the
// method's breaker and the target's budget. Both the unary and the stream
// interceptor run every attempt through the same entry methods (admit,
// classify, decide, newCall, retrying, giveUp).
type entry struct {
	s      *Suite
	method string
	pol    *policy // nil: the method has no policy (a cached pass-through)
	brk    *breaker.Breaker
	budget *retry.Budget // nil: no budget

	rej atomic.Pointer[rejectError] // the rejection of the current open period
}

// New validates policies and returns a Suite. Keys are full method names
// ("/pkg.Svc/Method"), services ("/pkg.Svc/*") or "*" for every method; a
// call uses the most specific match, and a method without a match passes
// through untouched. The "*" policy never covers the standard health check
// service (/grpc.health.v1.Health/*): name it to cover it.
//
// Errors name the key and the field, such as
//
//	interceptors: policy "/echo.v1.Echo/*": Retry.MaxAttempts: must be at least 1, got -1
func New(policies map[string]Policy, opts ...Option) (*Suite, error) {
	s := &Suite{o: defaultOptions()}
	for _, o := range opts {
		if o != nil {
			o.apply(&s.o)
		}
	}
	if err := s.o.validate(); err != nil {
		return nil, err
	}
	s.headers = headerContexts(s.o.header)
	tab, err := s.resolve(policies)
	if err != nil {
		return nil, err
	}
	s.tab.Store(tab)
	return s, nil
}

// resolve validates policies and builds a table.
func (s *Suite) resolve(policies map[string]Policy) (*table, error) {
	tab := &table{exact: map[string]*policy{}, service: map[string]*policy{}}
	for key, p := range policies {
		pol, err := resolvePolicy(key, p, s.o.stateChangeHook())
		if err != nil {
			return nil, err
		}
		switch {
		case key == "*":
			tab.star = pol
		case strings.HasSuffix(key, "/*"):
			tab.service[key[:len(key)-1]] = pol
		default:
			tab.exact[key] = pol
		}
	}
	return tab, nil
}

// match returns the policy of method (exact, then service, then "*"), or nil.
func (t *table) match(method string) *policy {
	if p, ok := t.exact[method]; ok {
		return p
	}
	if i := strings.LastIndexByte(method, '/'); i > 0 {
		if p, ok := t.service[method[:i+1]]; ok {
			return p
		}
	}
	if t.star != nil && !strings.HasPrefix(method, healthPrefix) {
		return t.star
	}
	return nil
}

// targetName returns the budget key of cc ("" for a nil cc, as in unit tests
// that call an interceptor directly).
func targetName(cc *grpc.ClientConn) string {
	if cc == nil {
		return ""
	}
	return cc.Target()
}

// lookup returns the entry of method called on cc, or nil if no policy
// covers the method (the caller must then pass the call through untouched:
// the invoker or streamer called with the caller's ctx and opts).
//
// The common case (same target as the previous call, the method string of a
// generated stub) is a few atomic loads and pointer comparisons; it never
// allocates after the first call of a method.
func (s *Suite) lookup(cc *grpc.ClientConn, method string) *entry {
	tab := s.tab.Load()
	name := targetName(cc)
	t := tab.last.Load()
	if t == nil || !sameString(t.name, name) {
		t = s.target(tab, name)
	}
	slot := &t.fast[fastSlot(method)]
	e := slot.Load()
	if e == nil || !sameString(e.method, method) {
		e = s.entryOf(tab, t, method)
		slot.Store(e)
	}
	if e.pol == nil {
		return nil
	}
	return e
}

// sameString is a == b, with the common case of the same bytes (a constant
// method name, a connection's target) decided without comparing them.
func sameString(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// entryOf returns the cached entry of method on t, resolving it on first use.
func (s *Suite) entryOf(tab *table, t *target, method string) *entry {
	if m := t.entries.Load(); m != nil {
		if e, ok := (*m)[method]; ok {
			return e
		}
	}
	return s.resolveEntry(tab, t, method)
}

// target returns (creating it on first use) the target called name and
// makes it tab's latest.
func (s *Suite) target(tab *table, name string) *target {
	v, ok := tab.targets.Load(name)
	if !ok {
		v, _ = tab.targets.LoadOrStore(name, &target{name: name, budget: s.budget(name)})
	}
	t := v.(*target)
	tab.last.Store(t)
	return t
}

// budget returns the retry budget of the target called name (one per target,
// shared by unary calls and streams of every method), or nil without budget.
func (s *Suite) budget(name string) *retry.Budget {
	if s.o.budget == budgetNone {
		return nil
	}
	if v, ok := s.budgets.Load(name); ok {
		return v.(*retry.Budget)
	}
	b := s.o.newBudget() // validated by New: cannot fail
	v, _ := s.budgets.LoadOrStore(name, b)
	return v.(*retry.Budget)
}

// resolveEntry resolves method on t and caches the result (an entry without
// policy for a pass-through).
func (s *Suite) resolveEntry(tab *table, t *target, method string) *entry {
	e := &entry{s: s, method: method}
	if pol := tab.match(method); pol != nil {
		key := method
		if s.o.breakerKey != nil {
			key = s.o.breakerKey(t.name, method)
		}
		e.pol, e.brk, e.budget = pol, pol.group.Get(key), t.budget
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.entries.Load()
	if old != nil {
		if cached, ok := (*old)[method]; ok {
			return cached // another goroutine won: use its entry (same breaker)
		}
		if len(*old) >= maxCachedMethods {
			return e
		}
	}
	m := make(map[string]*entry, 1+lenOf(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[method] = e
	t.entries.Store(&m)
	return e
}

func lenOf(m *map[string]*entry) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// Unary returns the unary client interceptor of the suite.
func (s *Suite) Unary() grpc.UnaryClientInterceptor { return s.unary }

// DialOptions returns the options that install the suite on a connection:
// its unary and stream interceptors (chained, so they compose with others:
// interceptors chained after these run once per attempt) and
// grpc.WithDisableRetry(), because the suite owns retries (grpc-go's own
// retries would multiply the attempts; its transparent retries stay on).
func (s *Suite) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(s.Unary()),
		grpc.WithChainStreamInterceptor(s.Stream()),
		grpc.WithDisableRetry(),
	}
}
