package debugpage_test

import (
	"net/http"

	"github.com/khive/grpc-resilience/debugpage"
	"github.com/khive/grpc-resilience/interceptors"
)

// The application mounts the page where it wants it, typically on an admin
// listener; WithControls adds the manual controls.
func ExampleNew() {
	suite, err := interceptors.New(map[string]interceptors.Policy{"*": {}})
	if err != nil {
		panic(err)
	}
	admin := http.NewServeMux()
	admin.Handle("/debug/resilience", debugpage.New(suite, debugpage.WithControls()))
	// Readiness: not ready while a breaker is open or forced open.
	admin.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := suite.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	_ = admin // http.ListenAndServe("localhost:6060", admin)
}
