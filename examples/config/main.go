// Command config shows policies loaded from a file and reloaded while the
// client runs. It starts the fault-injecting echo server on loopback, loads
// the embedded policy.yaml (a gRPC service config plus a circuit breaker)
// from a file, builds the client's interceptors from it, and watches the
// file: it raises maxAttempts in the file and the next call gets the new
// policy (with its breaker and retry budget kept), then writes an invalid
// version, which is reported and skipped, and one larger than the watcher's
// size limit, also skipped. It ends by printing the suite's snapshot as
// JSON:
//
//	go run ./examples/config
//
// It checks every step and exits with status 1 if one did not behave as
// printed (CI runs it).
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/khive/grpc-resilience/config"
	"github.com/khive/grpc-resilience/interceptors"
	"github.com/khive/grpc-resilience/internal/echoserver"
	echov1 "github.com/khive/grpc-resilience/internal/echov1"
)

//go:embed policy.yaml
var policy string

const (
	unary    = "/khive.echo.v1.EchoService/Unary"
	interval = 20 * time.Millisecond // how often the file is polled
	patience = 5 * time.Second       // how long a step may wait for the watcher
	maxBytes = 64 << 10              // a policy file is small: refuse larger ones (the default is 4 MiB)
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "FAILED:", err)
		os.Exit(1)
	}
	fmt.Println("\nok")
}

func run() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dir, err := os.MkdirTemp("", "khive-config-example")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte(policy), 0o600); err != nil {
		return err
	}

	fmt.Println("1. Load policy.yaml and build the client's interceptors from it")
	cfg, err := config.LoadFile(file)
	if err != nil {
		return err
	}
	fmt.Printf("   policies: %s; budget: %v; ignored: %v\n", keys(cfg), cfg.Budget.Mode, cfg.Ignored)
	suite, err := cfg.NewSuite()
	if err != nil {
		return err
	}
	srv := echoserver.New(1)
	// The document's grpc fields (timeout, waitForReady, ...) first, then the
	// suite: the timeout bounds the whole call, retries included.
	cc, closeAll, err := echoserver.Loopback(srv, append(cfg.DialOptions(), suite.DialOptions()...)...)
	if err != nil {
		return err
	}
	defer closeAll()
	client := echov1.NewEchoServiceClient(cc)

	// Watch the file: each new content is applied to the live suite.
	applied := make(chan *config.Config, 8)
	rejected := make(chan error, 8)
	watched := make(chan error, 1)
	go func() {
		watched <- config.WatchFile(ctx, file, interval,
			func(c *config.Config) error {
				if err := c.Apply(suite); err != nil {
					return err
				}
				applied <- c
				return nil
			},
			func(err error) { rejected <- err },
			config.WithMaxBytes(maxBytes))
	}()
	defer func() {
		cancel()
		<-watched // the watcher has returned: nothing left running
	}()
	if _, err := receive(applied, rejected); err != nil { // the first poll applies the file as it is
		return err
	}

	fmt.Println("\n2. A call whose first 3 attempts fail: maxAttempts is 3, so it fails")
	err = call(ctx, client, "first", 3)
	fmt.Printf("   %s after %d attempts\n", status.Code(err), srv.Attempts("first"))
	if status.Code(err) != codes.Unavailable || srv.Attempts("first") != 3 {
		return fmt.Errorf("want UNAVAILABLE after 3 attempts, got %v after %d", err, srv.Attempts("first"))
	}
	before := method(suite.Snapshot(), unary)

	fmt.Println("\n3. Edit the file (maxAttempts: 5); the watcher reloads it")
	edited := strings.Replace(policy, "maxAttempts: 3", "maxAttempts: 5", 1)
	if err := replace(file, edited); err != nil {
		return err
	}
	c, err := receive(applied, rejected)
	if err != nil {
		return err
	}
	fmt.Printf("   reloaded: %s now has maxAttempts %d\n", unary, c.Policies[unary].Retry.MaxAttempts)
	err = call(ctx, client, "second", 3)
	fmt.Printf("   the same kind of call: %v after %d attempts\n", codeOf(err), srv.Attempts("second"))
	if err != nil || srv.Attempts("second") != 4 {
		return fmt.Errorf("want success after 4 attempts, got %v after %d", err, srv.Attempts("second"))
	}
	after := method(suite.Snapshot(), unary)
	fmt.Printf("   the breaker was kept (same settings): failures %d before the reload, %d after\n", before.Failures, after.Failures)
	if after.Failures != before.Failures+3 || after.State != "closed" {
		return fmt.Errorf("want the breaker kept with %d failures, got %+v", before.Failures+3, after)
	}

	fmt.Println("\n4. Write an invalid version (maxAttempts: 1); it is reported and skipped")
	broken := strings.Replace(policy, "maxAttempts: 3", "maxAttempts: 1", 1)
	if err := replace(file, broken); err != nil {
		return err
	}
	_, err = receive(applied, rejected)
	if err == nil {
		return errors.New("the invalid version was applied")
	}
	fmt.Printf("   %v\n", strings.Replace(err.Error(), file, "policy.yaml", 1))
	if got := maxAttempts(suite.Snapshot(), unary); got != 5 {
		return fmt.Errorf("want the policy of step 3 kept (maxAttempts 5), got %d", got)
	}
	fmt.Println("   the suite keeps the policy of step 3 (maxAttempts 5)")

	fmt.Println("\n5. Write a version larger than the watcher's limit (64 KiB); it is reported and skipped")
	padded := edited + "# " + strings.Repeat("x", maxBytes) + "\n"
	if err := replace(file, padded); err != nil {
		return err
	}
	_, err = receive(applied, rejected)
	if err == nil {
		return errors.New("the oversized version was applied")
	}
	fmt.Printf("   %v\n", strings.ReplaceAll(err.Error(), file, "policy.yaml"))
	if !strings.Contains(err.Error(), "larger than 65536 bytes") {
		return fmt.Errorf("want the size limit reported, got %v", err)
	}

	fmt.Println("\n6. The suite's snapshot (effective policies, breakers, budgets)")
	out, err := json.MarshalIndent(suite.Snapshot(), "   ", "  ")
	if err != nil {
		return err
	}
	fmt.Printf("   %s\n", out)
	return nil
}

// replace writes content to file as WatchFile asks: into another file,
// renamed over it, so that a poll never sees a half-written document.
func replace(file, content string) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// call makes a unary call whose first n attempts fail with UNAVAILABLE.
func call(ctx context.Context, client echov1.EchoServiceClient, key string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	_, err := client.Unary(ctx, &echov1.UnaryRequest{Message: key, Fault: &echov1.Fault{
		Code: uint32(codes.Unavailable), Key: key, FailAttempts: int32(n),
	}})
	return err
}

// receive waits for the watcher's next outcome.
func receive(applied <-chan *config.Config, rejected <-chan error) (*config.Config, error) {
	t := time.NewTimer(patience)
	defer t.Stop()
	select {
	case c := <-applied:
		return c, nil
	case err := <-rejected:
		return nil, err
	case <-t.C:
		return nil, errors.New("the watcher did not react within " + patience.String())
	}
}

func keys(c *config.Config) string {
	var ks []string
	for k := range c.Policies {
		ks = append(ks, k)
	}
	if len(ks) == 2 && ks[0] > ks[1] {
		ks[0], ks[1] = ks[1], ks[0]
	}
	return strings.Join(ks, ", ")
}

func method(s interceptors.Snapshot, name string) interceptors.SnapshotMethod {
	for _, m := range s.Methods {
		if m.Method == name {
			return m
		}
	}
	return interceptors.SnapshotMethod{}
}

func maxAttempts(s interceptors.Snapshot, key string) int {
	for _, p := range s.Policies {
		if p.Key == key {
			return p.Retry.MaxAttempts
		}
	}
	return 0
}

func codeOf(err error) string {
	if err == nil {
		return "OK"
	}
	return status.Code(err).String()
}
