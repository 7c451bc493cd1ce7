package debugpage_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/khive/grpc-resilience/breaker"
	"github.com/khive/grpc-resilience/debugpage"
)

// chromium returns the path of a Chromium binary. Without one it skips the
// test, unless the environment variable CI is set: CI installs Chromium
// (.ci/run), so there a missing browser is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("no Chromium binary in PATH (looked for %s); install Debian's chromium package to run the browser test", strings.Join(names, ", "))
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: .ci/run installs it, so this is a failure)")
	}
	t.Skip(msg)
	return ""
}

// console collects what the page logs as an error: console.error and
// console.assert calls, uncaught exceptions and browser log entries of
// level error (such as a Content-Security-Policy violation or a failed
// load).
type console struct {
	mu     sync.Mutex
	errors []string
}

func (c *console) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError && ev.Type != runtime.ConsoleAPICalledTypeAssert {
			return
		}
		var args []string
		for _, a := range ev.Args {
			args = append(args, string(a.Value)+a.Description)
		}
		msg = "console." + string(ev.Type) + ": " + strings.Join(args, " ")
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg = "exception: " + d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
	case *log.EventEntryAdded:
		if ev.Entry.Level != log.EntryLevelError {
			return
		}
		msg = "log (" + string(ev.Entry.Source) + "): " + ev.Entry.Text + " " + ev.Entry.URL
	default:
		return
	}
	c.mu.Lock()
	c.errors = append(c.errors, msg)
	c.mu.Unlock()
}

func (c *console) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errors...)
}

// TestBrowser drives the page in headless Chromium over a suite connected
// to a real grpc server: the page shows the Unary breaker closed, then open
// once an outage is scripted (with its failures, rejection and state
// change), and the Reset button closes it, which calls then see. The page
// logs no error to the console. Screenshots (PNG) are kept in the test's
// temporary directory, or in $DEBUGPAGE_SCREENSHOTS if set.
func TestBrowser(t *testing.T) {
	exe := chromium(t)
	env := start(t)
	require.NoError(t, call(env))
	stream(t, env)
	srv := httptest.NewServer(debugpage.New(env.Suite, debugpage.WithControls()))
	defer srv.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // CI runs as root
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1600, 1000),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf), chromedp.WithErrorf(t.Logf))
	defer cancel()
	var con console
	require.NoError(t, chromedp.Listen(ctx, con.listen)) // starts the browser
	defer func() { _ = chromedp.Cancel(ctx) }()

	wait := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		require.NoError(t, chromedp.Do(wctx, actions...), what)
	}
	row := `tr[data-method="` + unaryMethod + `"][data-target="` + target + `"]`
	state := func(s string) chromedp.CSS { return chromedp.CSS(row + ` td.state[data-state="` + s + `"]`) }

	wait("load the page, the breaker closed",
		chromedp.Navigate(srv.URL+"/debug/resilience"),
		chromedp.WaitVisible(state("closed")),
		chromedp.WaitVisible(chromedp.CSS(`#passthrough td`)),
	)
	passThrough, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#passthrough tbody`)))
	require.NoError(t, err)
	assert.Contains(t, passThrough, streamMethod)

	outage(t, env)
	wait("the page shows the breaker open by itself", chromedp.WaitVisible(state("open")))
	// The counts and the change arrive with the same refresh.
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`document.querySelector('#changes tbody').textContent.includes('`+unaryMethod+`')`,
		chromedp.WithPollingTimeout(30*time.Second)))
	require.NoError(t, err)
	cells, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(row)))
	require.NoError(t, err)
	assert.Contains(t, cells, "\u2264 ", "time left of the open period: %q", cells)
	screenshot(t, ctx, "debugpage-open.png")

	env.Faults.SetDown(false)
	wait("reset closes the breaker",
		chromedp.Click(chromedp.CSS(row+` button[data-action="reset"]`)),
		chromedp.WaitVisible(state("closed")),
	)
	msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("message")))
	require.NoError(t, err)
	assert.Equal(t, "reset: "+unaryMethod+" \u2713", msg)
	require.NoError(t, call(env), "calls pass again")
	assert.Equal(t, breaker.Closed.String(), env.Suite.StateChanges()[1].To)
	screenshot(t, ctx, "debugpage-reset.png")

	assert.Empty(t, con.list(), "the page logged errors")
}

// screenshot saves a PNG of the whole page and logs its path.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	dir := os.Getenv("DEBUGPAGE_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot: %s", path)
}
