package debugpage_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/debugpage"
	"github.com/khive/grpc-resilience/interceptors"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
	"github.com/khive/grpc-resilience/internal/scenario"
	"github.com/khive/grpc-resilience/retry"
)

const (
	unaryMethod  = "/khive.echo.v1.EchoService/Unary"
	streamMethod = "/khive.echo.v1.EchoService/ServerStream"
	target       = "passthrough:///scenario"
)

// start runs the scenario server behind a suite with a policy for Unary
// only (ServerStream passes through): 3 failed calls open the breaker for a
// minute.
func start(t *testing.T) *scenario.Env {
	t.Helper()
	env, err := scenario.Start(map[string]interceptors.Policy{
		unaryMethod: {
			Retry:   retry.Policy{MaxAttempts: 1},
			Breaker: breaker.Config{ConsecutiveFailures: 3, RecoveryTime: time.Minute, ThrottleK: -1},
		},
	})
	require.NoError(t, err)
	t.Cleanup(env.Close)
	return env
}

func call(env *scenario.Env) error {
	_, err := env.Client.Unary(context.Background(), &echov1.UnaryRequest{Message: "m"})
	return err
}

// outage makes the Unary breaker open: the server fails 3 calls.
func outage(t *testing.T, env *scenario.Env) {
	t.Helper()
	env.Faults.SetDown(true)
	for range 3 {
		require.Error(t, call(env))
	}
	require.ErrorIs(t, call(env), breaker.ErrOpen)
}

func stream(t *testing.T, env *scenario.Env) {
	t.Helper()
	st, err := env.Client.ServerStream(context.Background(), &echov1.ServerStreamRequest{Message: "m", Count: 1})
	require.NoError(t, err)
	for {
		if _, err := st.Recv(); err != nil {
			require.ErrorIs(t, err, io.EOF)
			return
		}
	}
}

func getJSON(t *testing.T, url string) debugpage.Data {
	t.Helper()
	resp, err := http.Get(url + "?format=json")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var d debugpage.Data
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&d))
	return d
}

func find(d debugpage.Data, method string) (interceptors.SnapshotMethod, bool) {
	for _, m := range d.Methods {
		if m.Method == method {
			return m, true
		}
	}
	return interceptors.SnapshotMethod{}, false
}

// TestJSON: ?format=json is the suite's Snapshot (its fields inline) plus
// the recent state changes, the time and whether controls are on.
func TestJSON(t *testing.T) {
	env := start(t)
	require.NoError(t, call(env))
	stream(t, env)
	outage(t, env)
	srv := httptest.NewServer(debugpage.New(env.Suite))
	defer srv.Close()

	before := time.Now()
	d := getJSON(t, srv.URL)
	assert.False(t, d.Controls)
	assert.False(t, d.Time.Before(before))
	m, ok := find(d, unaryMethod)
	require.True(t, ok)
	assert.Equal(t, "open", m.State)
	assert.Equal(t, target, m.Target)
	assert.Equal(t, uint64(3), m.Failures)
	assert.Equal(t, uint64(1), m.Rejections)
	assert.NotEmpty(t, m.RetryAfter)
	require.NotNil(t, m.Since)
	assert.Equal(t, []interceptors.SnapshotPassThrough{{Method: streamMethod, Target: target}}, d.PassThrough)
	require.Len(t, d.Changes, 1)
	assert.Equal(t, interceptors.StateChange{Time: d.Changes[0].Time, Method: unaryMethod, Target: target, From: "closed", To: "open"}, d.Changes[0])
	require.Len(t, d.Budget.Targets, 1)
	assert.Equal(t, target, d.Budget.Targets[0].Target)

	// The field names are the Snapshot's, at the top level.
	resp, err := http.Get(srv.URL + "/any/path?format=json")
	require.NoError(t, err)
	defer resp.Body.Close()
	var raw map[string]json.RawMessage
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&raw))
	for _, k := range []string{"policies", "methods", "passThrough", "breakers", "budget", "changes", "time", "controls"} {
		assert.Contains(t, raw, k)
	}
}

var tokenRE = regexp.MustCompile(`token: "([^"]+)"`)

// page fetches the HTML page and returns it and its control token ("" if
// none).
func page(t *testing.T, url string) (string, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	assert.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
	assert.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	html := string(body)
	assert.NotContains(t, html, "http://", "the page loads nothing from outside")
	assert.NotContains(t, html, "https://")
	if m := tokenRE.FindStringSubmatch(html); m != nil {
		return html, m[1]
	}
	return html, ""
}

func post(t *testing.T, url string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReadOnlyByDefault: without WithControls the page has no token and no
// buttons, and a POST is 405 (even with a token from another handler).
func TestReadOnlyByDefault(t *testing.T) {
	env := start(t)
	outage(t, env)
	srv := httptest.NewServer(debugpage.New(env.Suite))
	defer srv.Close()

	html, token := page(t, srv.URL)
	assert.Empty(t, token)
	assert.NotContains(t, html, "<th>Controls</th>")

	other := httptest.NewServer(debugpage.New(env.Suite, debugpage.WithControls()))
	defer other.Close()
	_, otherToken := page(t, other.URL)
	require.NotEmpty(t, otherToken)

	form := url.Values{"action": {"reset"}, "method": {unaryMethod}, "token": {otherToken}}
	code, _ := post(t, srv.URL, form, nil)
	assert.Equal(t, http.StatusMethodNotAllowed, code)
	require.ErrorIs(t, call(env), breaker.ErrOpen) // still open

	for _, m := range []string{http.MethodPut, http.MethodDelete} {
		req, err := http.NewRequest(m, srv.URL, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_ = resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
		assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
	}
}

// TestControls: with WithControls a POST needs the page's token (header or
// form field) and the page's origin; a good one switches the breaker.
func TestControls(t *testing.T) {
	env := start(t)
	require.NoError(t, call(env))
	srv := httptest.NewServer(debugpage.New(env.Suite, debugpage.WithControls()))
	defer srv.Close()
	html, token := page(t, srv.URL)
	require.NotEmpty(t, token)
	assert.Contains(t, html, "<th>Controls</th>")
	host := strings.TrimPrefix(srv.URL, "http://")

	isolate := url.Values{"action": {"isolate"}, "method": {unaryMethod}}
	withToken := url.Values{"action": {"isolate"}, "method": {unaryMethod}, "token": {token}}
	for _, tc := range []struct {
		name   string
		form   url.Values
		header map[string]string
	}{
		{"no token", isolate, nil},
		{"wrong token", isolate, map[string]string{debugpage.TokenHeader: token + "x"}},
		{"empty token", url.Values{"action": {"isolate"}, "method": {unaryMethod}, "token": {""}}, nil},
		{"cross-origin", withToken, map[string]string{"Origin": "http://evil.example"}},
		{"null origin", withToken, map[string]string{"Origin": "null"}},
		{"cross-site fetch", withToken, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"same-site fetch", withToken, map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://" + host}},
	} {
		code, body := post(t, srv.URL, tc.form, tc.header)
		assert.Equal(t, http.StatusForbidden, code, "%s: %s", tc.name, body)
	}
	require.NoError(t, call(env), "no rejected request changed the breaker")

	code, body := post(t, srv.URL, isolate, map[string]string{debugpage.TokenHeader: token, "Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"})
	require.Equal(t, http.StatusOK, code, body)
	require.ErrorIs(t, call(env), breaker.ErrOpen)
	m, _ := find(getJSON(t, srv.URL), unaryMethod)
	assert.Equal(t, "forced-open", m.State)

	// The form field works too (a form post without JavaScript: 303 back).
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/debug", strings.NewReader(url.Values{"action": {"reset"}, "method": {unaryMethod}, "target": {target}, "token": {token}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusSeeOther, resp.StatusCode)
	assert.Equal(t, "/debug", resp.Header.Get("Location"))
	require.NoError(t, call(env))

	for _, tc := range []struct {
		action, method, target string
		code                   int
	}{
		{"disable", unaryMethod, "", http.StatusOK},
		{"metrics-only", unaryMethod, target, http.StatusOK},
		{"open", unaryMethod, "", http.StatusBadRequest},
		{"reset", "", "", http.StatusBadRequest},
		{"reset", "/nope.Svc/M", "", http.StatusNotFound},
		{"reset", unaryMethod, "dns:///other", http.StatusNotFound},
	} {
		form := url.Values{"action": {tc.action}, "method": {tc.method}, "target": {tc.target}}
		code, body := post(t, srv.URL, form, map[string]string{debugpage.TokenHeader: token})
		assert.Equal(t, tc.code, code, "%+v: %s", tc, body)
	}
	m, _ = find(getJSON(t, srv.URL), unaryMethod)
	assert.Equal(t, "metrics-only", m.State)

	// Each handler has its own token.
	other := httptest.NewServer(debugpage.New(env.Suite, debugpage.WithControls()))
	defer other.Close()
	_, otherToken := page(t, other.URL)
	require.NotEqual(t, token, otherToken)
	code, _ = post(t, srv.URL, isolate, map[string]string{debugpage.TokenHeader: otherToken})
	assert.Equal(t, http.StatusForbidden, code)
}
