// Command observability runs the suite as a service runs it in production,
// watched: a flaky echo server (a share of its attempts fail UNAVAILABLE,
// and for a while it is down altogether), a client with the suite on its
// connection, and an HTTP server on loopback with
//
//   - /metrics: the suite's OpenTelemetry instruments (WithMeterProvider with
//     the SDK's MeterProvider) in Prometheus' text format, through the
//     OpenTelemetry Prometheus exporter;
//   - /debug/resilience: the live debug page (package debugpage), with its
//     manual controls on;
//   - /ready: a readiness check (Suite.Ready): 503 while a breaker is open.
//
// It prints the URLs, drives load for -duration, and exits 0:
//
//	cd examples/observability && go run .
//
// Open the debug page during the outage (the second third of the run) to
// watch the breaker open, probe and close; -port fixes the HTTP port. With
// -check it scrapes its own /metrics once at the end and exits 1 unless the
// retry and breaker series are there (CI runs it so).
//
// The example is a module of its own so that the SDK, the exporter and the
// Prometheus client are its dependencies, not the library's: the library
// depends on the OpenTelemetry API only.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/debugpage"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

const (
	callers   = 8                     // goroutines making calls
	interval  = 20 * time.Millisecond // each caller's pause between calls
	timeout   = time.Second           // each call's deadline
	flakiness = 0.1                   // share of the attempts that fail outside the outage
)

func main() {
	port := flag.Int("port", 0, "the HTTP port on 127.0.0.1 of /metrics, /debug/resilience and /ready (0: any free port)")
	duration := flag.Duration("duration", 30*time.Second, "how long to drive load; the server is down during its second third")
	check := flag.Bool("check", false, "scrape /metrics at the end and exit 1 unless the retry and breaker series are there")
	flag.Parse()
	if err := run(os.Stdout, *port, *duration, *check); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

func run(out io.Writer, port int, duration time.Duration, check bool) error {
	if duration <= 0 {
		return errors.New("-duration must be positive")
	}
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(out, "[%6.2fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	// Metrics: an SDK MeterProvider whose reader is the Prometheus exporter,
	// registered on a registry of our own (not the global one).
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	// The flaky server, on loopback.
	srv := echoserver.New(1)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stopServer := echoserver.Serve(srv, lis, grpc.UnaryInterceptor(flaky(flakiness)))
	defer stopServer()

	// The client: the suite's defaults for every method of the service, its
	// instruments on mp, and its breakers' state changes logged.
	suite, err := interceptors.New(
		map[string]interceptors.Policy{"/khive.echo.v1.EchoService/*": {}},
		interceptors.WithMeterProvider(mp),
		interceptors.WithOnStateChangeEvent(func(ev interceptors.StateChangeEvent) {
			logf("breaker %s on %s: %s -> %s", ev.Breaker, ev.Target, ev.From, ev.To)
		}),
	)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(lis.Addr().String(),
		append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, suite.DialOptions()...)...)
	if err != nil {
		return err
	}
	defer func() { _ = cc.Close() }()
	client := echov1.NewEchoServiceClient(cc)

	// The HTTP server. Serve the debug page with controls only to operators:
	// here it listens on loopback.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/debug/resilience", debugpage.New(suite, debugpage.WithControls()))
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := suite.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	hl, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(hl)
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-served
	}()
	base := "http://" + hl.Addr().String()
	fmt.Fprintf(out, "metrics:    %s/metrics\ndebug page: %s/debug/resilience\nreadiness:  %s/ready\n", base, base, base)
	fmt.Fprintf(out, "driving load for %v (%d callers, %.0f%% of the attempts fail; the server is down from %v to %v)\n\n",
		duration, callers, 100*flakiness, (duration / 3).Round(time.Millisecond), (duration / 3 * 2).Round(time.Millisecond))

	ok, failed := drive(client, srv, duration, logf)
	ready := "ready"
	if err := suite.Ready(); err != nil {
		ready = err.Error()
	}
	fmt.Fprintf(out, "\n%d calls succeeded, %d failed; %s\n", ok, failed, ready)

	if !check {
		return nil
	}
	return checkMetrics(out, base+"/metrics")
}

// flaky fails a share p of the attempts with UNAVAILABLE, as a service does
// while its instances restart one by one.
func flaky(p float64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if rand.Float64() < p {
			return nil, status.Error(codes.Unavailable, "instance restarting")
		}
		return h(ctx, req)
	}
}

// drive makes calls from callers goroutines for duration, takes the server
// down during the second third of it, logs a line a tenth of the way, and
// returns how many calls succeeded and failed.
func drive(client echov1.EchoServiceClient, srv *echoserver.Server, duration time.Duration, logf func(string, ...any)) (ok, failed int64) {
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var nOK, nFailed, seq atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for ctx.Err() == nil {
				// A call of its own deadline, not ctx's: the run's end
				// must not count as failures.
				cctx, ccancel := context.WithTimeout(context.Background(), timeout)
				_, err := client.Unary(cctx, &echov1.UnaryRequest{Message: "m" + strconv.FormatInt(seq.Add(1), 10)})
				ccancel()
				if err == nil {
					nOK.Add(1)
				} else {
					nFailed.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(interval):
				}
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(duration / 10)
		defer tick.Stop()
		down, up := time.After(duration/3), time.After(duration/3*2)
		for {
			select {
			case <-ctx.Done():
				return
			case <-down:
				srv.SetDown(true)
				logf("server down")
			case <-up:
				srv.SetDown(false)
				logf("server up")
			case <-tick.C:
				logf("%d calls succeeded, %d failed", nOK.Load(), nFailed.Load())
			}
		}
	})
	wg.Wait()
	return nOK.Load(), nFailed.Load()
}

// The metric families -check requires, as the Prometheus exporter names
// them: the instrument's name with dots as underscores, the unit's suffix
// ("{retry}" has none), and _total for a counter.
var required = []string{
	"grpc_client_call_retries",             // histogram: the calls' retries (gRFC A96)
	"grpc_client_call_retry_delay_seconds", // histogram: the calls' time between attempts
	"khive_resilience_breaker_state_ratio",
	"khive_resilience_breaker_transitions_total",
	"khive_resilience_rejections_total",
}

// checkMetrics scrapes url once and returns an error unless every required
// family is there and a breaker transition to open was counted (the outage
// must have opened the breaker).
func checkMetrics(out io.Writer, url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape: %s", resp.Status)
	}
	families := map[string]string{} // name: type
	var samples []string            // the suite's samples worth printing
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			families[f[2]] = f[3]
			continue
		}
		if strings.HasPrefix(line, "khive_resilience_breaker_transitions_total{") ||
			strings.HasPrefix(line, "grpc_client_call_retries_count{") ||
			strings.HasPrefix(line, "khive_resilience_rejections_total{") ||
			strings.HasPrefix(line, "khive_resilience_breaker_state_ratio{") && strings.HasSuffix(line, " 1") {
			samples = append(samples, line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("scrape: %w", err)
	}

	fmt.Fprintf(out, "\n/metrics: the suite's families\n")
	var names []string
	for name := range families {
		if strings.HasPrefix(name, "grpc_client_call_") || strings.HasPrefix(name, "khive_resilience_") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(out, "  %-52s %s\n", name, families[name])
	}
	fmt.Fprintf(out, "samples:\n")
	for _, s := range samples {
		fmt.Fprintf(out, "  %s\n", s)
	}

	var missing []string
	for _, name := range required {
		if _, ok := families[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("check: /metrics lacks %s", strings.Join(missing, ", "))
	}
	if !slices.ContainsFunc(samples, func(s string) bool {
		return strings.HasPrefix(s, "khive_resilience_breaker_transitions_total{") && strings.Contains(s, `breaker_to="open"`)
	}) {
		return errors.New("check: no breaker transition to open was counted")
	}
	fmt.Fprintf(out, "check: ok, the retry and breaker series are there\n")
	return nil
}
