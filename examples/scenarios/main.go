// Command scenarios runs the situations in which a circuit breaker can cost
// availability against a real grpc server (over an in-memory connection),
// once with the suite's defaults and once with the breaker disabled, and
// prints the table of the README's "When the breaker acts". It exits
// non-zero if the defaults did worse than no breaker where the project
// promises they never do. It takes about 20 seconds (real time).
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/khive/grpc-resilience/internal/scenario"
)

func main() {
	start := time.Now()
	report, err := scenario.Measure()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scenarios:", err)
		os.Exit(1)
	}
	fmt.Println("| situation | measure | defaults | no breaker |")
	fmt.Println("|---|---|---:|---:|")
	for _, r := range report.Rows() {
		fmt.Printf("| %s | %s | %s | %s |\n", r.Situation, r.Measure, r.Defaults, r.None)
	}
	fmt.Printf("\n(measured on the real clock in %.0f s, each situation with and without the breaker at once)\n", time.Since(start).Seconds())
	// The real clock of a busy machine: allow 100ms more on time bounds
	// (the tests check the exact bounds in simulated time).
	if bad := report.Problems(100 * time.Millisecond); len(bad) > 0 {
		for _, b := range bad {
			fmt.Fprintln(os.Stderr, "scenarios: FAILED:", b)
		}
		os.Exit(1)
	}
}
