package interceptors

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/retry"
)

// healthPrefix is the service of the standard health check, which the "*"
// policy never covers: probes must see the real state of the server.
const healthPrefix = "/grpc.health.v1.Health/"

// maxCachedMethods bounds a connection's cache of resolved methods (see
// [Suite]; a method resolved again allocates once).
const maxCachedMethods = 4096

// Suite holds the policies of a set of methods and the state behind them (one
// circuit breaker per target and method, one retry budget per target).
// Create it with New and install it on a grpc.ClientConn with DialOptions (or
// Unary and Stream). A Suite is safe for concurrent use and may serve several
// connections.
//
// Its memory is bounded: at most WithMaxBreakers breakers (plus one overflow
// breaker per policy); per connection, a cache of at most 4096 methods,
// emptied when full; per target, one budget while a connection to it is
// open. The state of closed connections is dropped at each Snapshot and
// whenever the number of connections doubles; a target's last connection
// takes its budget and its closed breakers with it (an open breaker stays).
type Suite struct {
	tab atomic.Pointer[table] // the resolved policies; swapped whole (a later Update)
	o   options               // immutable after New

	headers []*mdHolder // prebuilt attempt-header metadata (see retryContext)

	reg     registry   // the breakers, across Updates
	umu     sync.Mutex // serializes Updates
	changes changeRing // the latest state changes (StateChanges)

	last  atomic.Pointer[conn] // the connection of the latest call
	conns sync.Map             // *grpc.ClientConn -> *conn

	nestedWarned, gmwWarned atomic.Bool // the warnings of layered, given once

	cmu     sync.Mutex              // guards targets, nconns, sweepAt (and adding to conns)
	targets map[string]*targetState // by cc.Target()
	nconns  int                     // entries in conns
	sweepAt int                     // nconns at which the next new connection sweeps conns
}

// targetState is the retry budget of one target and the number of
// connections (entries of Suite.conns) to it.
type targetState struct {
	budget retry.Budget // nil: no budget
	refs   int
}

// table is the immutable resolved form of a policy map.
type table struct {
	exact   map[string]*policy // "/pkg.Svc/Method"
	service map[string]*policy // "/pkg.Svc/" (the key without its "*")
	star    *policy            // "*", or nil
	// forced holds the keys of the policies whose Breaker.Mode is
	// breaker.ForcedOpen (their policy's cfg.Mode is Closed).
	forced map[string]bool
}

// conn is the per-connection state: its target, its target's budget and the
// cache of the entries of the methods called on it.
type conn struct {
	cc     *grpc.ClientConn
	name   string       // cc.Target()
	budget retry.Budget // nil: no budget
	// fast holds, per chain (unary, stream), a direct-mapped cache indexed by
	// the address of the method string's bytes (generated stubs pass the same
	// constant string); a slot's entry keeps those bytes alive. See route.
	fast    [2][fastSlots]atomic.Pointer[entry]
	methods sync.Map                 // method -> *entry, at most maxCachedMethods
	n       atomic.Int64             // methods stored in methods
	layers  [2]atomic.Pointer[layer] // of the unary and the stream chain (see layered)
}

// fastSlots is the size of conn.fast (a power of two).
const fastSlots = 64

// fastSlot returns the index of method in conn.fast.
func fastSlot(method string) uintptr {
	h := uintptr(unsafe.Pointer(unsafe.StringData(method)))
	return (h * 0x9E3779B97F4A7C15) >> (64 - 6) & (fastSlots - 1)
}

// New validates policies and returns a Suite. Keys are full method names
// ("/pkg.Svc/Method"), services ("/pkg.Svc/*") or "*" for every method; a
// call uses the most specific match, and a method without a match passes
// through untouched. The "*" policy never covers the standard health check
// service (/grpc.health.v1.Health/*): name it to cover it.
//
// Policy.Breaker.Mode may also be breaker.ForcedOpen: each breaker of the
// policy starts forced open (every call rejected, as after SetMode with
// breaker.ForcedOpen) and otherwise has the policy's settings in Closed mode;
// SetMode can close it.
//
// Errors name the option, or the key (quoted, and cut after 64 bytes) and the
// field, such as
//
//	interceptors: policy "/echo.v1.Echo/*": Retry.MaxAttempts: must be at least 1, got -1
//
// New reports every problem: options first, then policies sorted by key,
// joined with [errors.Join]. A key with a space is an error; one whose
// service or method the proto registry does not know is a warning, or an
// error with [WithStrictKeys].
func New(policies map[string]Policy, opts ...Option) (*Suite, error) {
	s := &Suite{o: defaultOptions(), targets: map[string]*targetState{}}
	for _, o := range opts {
		if o != nil {
			o.apply(&s.o)
		}
	}
	errs := s.o.validate()
	tab, perrs := s.resolve(policies)
	if err := joinErrors(append(errs, perrs...)); err != nil {
		return nil, err
	}
	if s.o.logger != nil && !s.o.strictKeys {
		s.warnUnregistered(slices.Sorted(maps.Keys(policies)))
	}
	s.o.metrics = newMetrics(s.o.meterProvider, s.o.methodFilter)
	s.headers = headerContexts(s.o.header)
	s.reg.tab, s.reg.max, s.reg.hook = &s.tab, s.o.maxBreakers, s.recordingHook(s.o.stateChangeHook())
	s.tab.Store(tab)
	s.o.metrics.suite.Store(s)
	return s, nil
}

// joinErrors returns nil, the one error of errs, or errors.Join(errs...).
func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// resolve validates policies and builds a table. It returns every problem,
// sorted by key, or a table.
func (s *Suite) resolve(policies map[string]Policy) (*table, []error) {
	tab := &table{exact: map[string]*policy{}, service: map[string]*policy{}, forced: map[string]bool{}}
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(policies)) {
		p := policies[key]
		forced := p.Breaker.Mode == breaker.ForcedOpen
		if forced {
			p.Breaker.Mode = breaker.Closed
		}
		if checkKey(key) == nil {
			if err := checkKeyName(key, s.o.strictKeys); err != nil {
				errs = append(errs, err)
			}
		}
		pol, err := resolvePolicy(key, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if forced {
			tab.forced[key] = true
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
	if errs != nil {
		return nil, errs
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

// targetName returns the target of cc ("" for a nil cc, as in unit tests
// that call an interceptor directly).
func targetName(cc *grpc.ClientConn) string {
	if cc == nil {
		return ""
	}
	return cc.Target()
}

// lookup returns the entry of method called on cc, or nil if no policy
// covers the method (the call then passes through untouched).
func (s *Suite) lookup(cc *grpc.ClientConn, method string) *entry {
	if e := s.entryOf(s.tab.Load(), s.conn(cc), method); e.pol != nil {
		return e
	}
	return nil
}

// route is lookup for a call through chain i of cc (0: unary, 1: stream),
// which also passes through when layered says so. The same connection as
// the previous call and a generated stub's constant method string make a
// fast-slot hit: a few atomic loads and pointer comparisons.
func (s *Suite) route(ctx context.Context, cc *grpc.ClientConn, method string, i int) *entry {
	tab := s.tab.Load()
	c := s.last.Load()
	if c == nil || c.cc != cc {
		c = s.conn(cc)
	}
	e := c.fast[i][fastSlot(method)].Load()
	if e == nil || !sameString(e.method, method) || e.tab != tab {
		return s.routeSlow(ctx, tab, c, method, i)
	}
	if s.o.logger != nil {
		s.checkGMW(ctx, cc, method)
	}
	if e.pol == nil {
		return nil
	}
	return e
}

// routeSlow is route on a fast-slot miss: it asks layered, then resolves
// the entry. It caches it in chain i's fast slots only if s is the chain's
// outermost suite, which never changes once known: a hit needs no layered.
func (s *Suite) routeSlow(ctx context.Context, tab *table, c *conn, method string, i int) *entry {
	if s.layered(ctx, c, method, i) {
		return nil
	}
	e := s.entryOf(tab, c, method)
	if c.layers[i].Load() == outermost {
		c.fast[i][fastSlot(method)].Store(e)
	}
	if e.pol == nil {
		return nil
	}
	return e
}

// sameString is a == b, with the common case of the same bytes (a constant
// method name) decided without comparing them.
func sameString(a, b string) bool {
	return len(a) == len(b) && (unsafe.StringData(a) == unsafe.StringData(b) || a == b)
}

// entryOf returns the entry of method on c under tab, from the connection's
// cache or resolved and cached. A cache that would grow past
// maxCachedMethods is emptied first.
func (s *Suite) entryOf(tab *table, c *conn, method string) *entry {
	if v, ok := c.methods.Load(method); ok {
		if e := v.(*entry); e.tab == tab {
			return e
		}
	}
	for {
		e := &entry{s: s, method: method, tab: tab, budget: c.budget}
		if e.pol = tab.match(method); e.pol != nil {
			if e.rec = s.reg.get(s, tab, c.name, method, e.pol); e.rec == nil {
				tab = s.tab.Load() // an Update ran: resolve under the new table
				continue
			}
			e.brk = e.rec.brk
		}
		if _, loaded := c.methods.Swap(method, e); !loaded && c.n.Add(1) > maxCachedMethods {
			c.methods.Clear()
			c.methods.Store(method, e)
			c.n.Store(1)
		}
		return e
	}
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

// conn returns the state of cc, creating it on first use, and makes it the
// latest. Creating one first drops the state of closed connections when
// their number has doubled since the last time (amortized O(1)).
func (s *Suite) conn(cc *grpc.ClientConn) *conn {
	v, ok := s.conns.Load(cc)
	if !ok {
		s.cmu.Lock()
		if v, ok = s.conns.Load(cc); !ok {
			if s.nconns >= s.sweepAt {
				s.sweepConns()
				s.sweepAt = max(2*s.nconns, 16)
			}
			name := targetName(cc)
			c := &conn{cc: cc, name: name, budget: s.acquireTarget(name)}
			if cc == nil { // no chain to be nested in (layered)
				c.layers[0].Store(outermost)
				c.layers[1].Store(outermost)
			}
			v = c
			s.conns.Store(cc, v)
			s.nconns++
		}
		s.cmu.Unlock()
	}
	c := v.(*conn)
	s.last.Store(c)
	return c
}

// sweepConns drops the state of the closed connections (s.cmu held); a
// target left without connections loses its budget and its closed breakers.
func (s *Suite) sweepConns() {
	var gone map[string]bool
	s.conns.Range(func(k, v any) bool {
		c := v.(*conn)
		if c.cc != nil && c.cc.GetState() == connectivity.Shutdown {
			s.conns.Delete(k)
			s.nconns--
			s.last.CompareAndSwap(c, nil) // do not keep the closed connection alive
			if t := s.targets[c.name]; t != nil {
				if t.refs--; t.refs == 0 {
					delete(s.targets, c.name)
					if gone == nil {
						gone = map[string]bool{}
					}
					gone[c.name] = true
				}
			}
		}
		return true
	})
	if gone != nil {
		s.reg.dropTargets(gone)
	}
}

// acquireTarget counts a new connection to the target called name and
// returns the target's retry budget (one per target, shared by the
// connections to it, by unary calls and streams of every method), or nil
// without budget (s.cmu held).
func (s *Suite) acquireTarget(name string) retry.Budget {
	t := s.targets[name]
	if t == nil {
		t = &targetState{budget: s.o.newBudget()}
		s.targets[name] = t
	}
	t.refs++
	return t.budget
}
