// Package debugpage serves a live view of an interceptors.Suite, in the
// spirit of net/http/pprof and golang.org/x/net/trace: every method seen
// (with or without a policy), its effective policy, each breaker's state
// with the time spent in it and the time left of an open period, its
// counts and throttle probability, the retry budget of every target, and
// the latest state changes. The page refreshes itself every second (it
// fetches the JSON form; no full reload) and needs nothing from outside:
// its CSS and JavaScript are inline.
//
// The same data is served as JSON with ?format=json (see Data).
//
// The handler is read-only unless the application opts in with
// WithControls, which adds buttons to isolate, reset, disable or switch to
// metrics-only each breaker (Suite.SetMode). Control requests are POSTs
// that must carry the handler's random token (embedded in the page) and
// come from the page's own origin.
//
// The library mounts the handler nowhere; the application chooses where,
// and who may reach it:
//
//	mux.Handle("/debug/resilience", debugpage.New(suite))
//
// A page with controls can take a service's dependencies out of use: serve
// it only to operators (behind authentication, or on an admin listener).
package debugpage

import (
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/interceptors"
)

// TokenHeader is the request header that carries the control token (the
// form field "token" may carry it instead).
const TokenHeader = "X-Debugpage-Token"

// DefaultRefresh is how often the page fetches fresh data by default.
const DefaultRefresh = time.Second

// maxFormBytes bounds the body of a control request.
const maxFormBytes = 4 << 10

// Data is the JSON form of the page (?format=json): the suite's Snapshot
// (its fields inline), the latest state changes (oldest first), the time
// the data was taken and whether the controls are on.
type Data struct {
	interceptors.Snapshot
	Changes  []interceptors.StateChange `json:"changes"`
	Time     time.Time                  `json:"time"`
	Controls bool                       `json:"controls"`
}

// Handler is the debug page of one Suite. Create it with New.
type Handler struct {
	s        *interceptors.Suite
	controls bool
	refresh  time.Duration
	token    string // the control token; "" without controls
}

// Option configures a Handler.
type Option func(*Handler)

// WithControls turns the manual controls on: the page gets buttons to
// isolate, reset, disable and switch each breaker to metrics-only, and the
// handler accepts them as POST requests with the form fields action
// ("isolate", "reset", "disable" or "metrics-only"), method and target (a
// breaker's name and target as the data lists them). A request must carry
// the handler's token (TokenHeader, or the form field "token"), and, when
// the browser sends them, an Origin of the request's own host and a
// Sec-Fetch-Site of "same-origin"; otherwise it gets 403 Forbidden. (A
// reverse proxy in front of the page must pass the Host header on, or the
// Origin check fails.) Without WithControls a POST gets 405 Method Not
// Allowed.
func WithControls() Option { return func(h *Handler) { h.controls = true } }

// WithRefresh sets how often the page fetches fresh data (default
// DefaultRefresh); d below 100ms is taken as 100ms.
func WithRefresh(d time.Duration) Option {
	return func(h *Handler) { h.refresh = max(d, 100*time.Millisecond) }
}

// New returns the debug page of s.
func New(s *interceptors.Suite, opts ...Option) *Handler {
	h := &Handler{s: s, refresh: DefaultRefresh}
	for _, o := range opts {
		if o != nil {
			o(h)
		}
	}
	if h.controls {
		h.token = randomToken()
	}
	return h
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ServeHTTP serves the page (GET or HEAD), its JSON form (?format=json) or,
// with WithControls, a control request (POST).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		if h.controls {
			h.control(w, r)
			return
		}
		fallthrough
	default:
		allow := "GET, HEAD"
		if h.controls {
			allow += ", POST"
		}
		w.Header().Set("Allow", allow)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	d := h.data()
	if r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
		return
	}
	nonce := randomToken()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+
		"'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	_ = page.Execute(w, pageData{
		Nonce:       nonce,
		Token:       h.token,
		TokenHeader: TokenHeader,
		Controls:    h.controls,
		RefreshMS:   h.refresh.Milliseconds(),
		Data:        d,
	})
}

func (h *Handler) data() Data {
	return Data{
		Snapshot: h.s.Snapshot(),
		Changes:  h.s.StateChanges(),
		Time:     time.Now(),
		Controls: h.controls,
	}
}

// actions maps a control's action to the breaker mode it sets.
var actions = map[string]breaker.State{
	"isolate":      breaker.ForcedOpen,
	"reset":        breaker.Closed,
	"disable":      breaker.Disabled,
	"metrics-only": breaker.MetricsOnly,
}

// control serves a control request (a POST with controls on).
func (h *Handler) control(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "forbidden: cross-origin request", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		http.Error(w, "bad request: the body must be application/x-www-form-urlencoded", http.StatusUnsupportedMediaType)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	token := r.Header.Get(TokenHeader)
	if token == "" {
		token = r.PostForm.Get("token")
	}
	if subtle.ConstantTimeCompare([]byte(token), []byte(h.token)) != 1 {
		http.Error(w, "forbidden: missing or wrong token", http.StatusForbidden)
		return
	}
	mode, ok := actions[r.PostForm.Get("action")]
	if !ok {
		http.Error(w, `bad request: action must be "isolate", "reset", "disable" or "metrics-only"`, http.StatusBadRequest)
		return
	}
	method := r.PostForm.Get("method")
	if method == "" {
		http.Error(w, "bad request: no method", http.StatusBadRequest)
		return
	}
	if err := h.s.SetMode(method, r.PostForm.Get("target"), mode); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, interceptors.ErrUnknownBreaker) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}` + "\n"))
		return
	}
	http.Redirect(w, r, r.URL.Path, http.StatusSeeOther) // a plain form post
}

// sameOrigin reports whether r comes from the page's own origin as far as
// the browser tells: Sec-Fetch-Site, if sent, must be "same-origin", and
// Origin, if sent, must name the request's host. (A request without either
// header does not come from a current browser's page; the token guards it.)
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// pageData is what the page template gets.
type pageData struct {
	Nonce       string
	Token       string
	TokenHeader string
	Controls    bool
	RefreshMS   int64
	Data        Data
}

//go:embed page.html
var pageHTML string

var page = template.Must(template.New("page").Parse(pageHTML))
