package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// allocated returns the bytes f allocates (runtime.MemStats.TotalAlloc).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// aliasBomb is a YAML document with one string of size bytes behind an
// anchor, repeated by n aliases in loadBalancingConfig, a free-form field.
func aliasBomb(size, n int) []byte {
	var b strings.Builder
	b.WriteString("loadBalancingConfig: [{x: &a " + strings.Repeat("x", size) + "}")
	for range n {
		b.WriteString(", *a")
	}
	b.WriteString("]\n")
	return []byte(b.String())
}

// TestYAMLAliasBytes: aliases that repeat a large string are expanded
// within WithMaxBytes, counted in bytes (not only in values), and the work
// is bounded: issue 11's document (a 1 MiB string, 49,000 aliases, 1.14
// MiB) and a smaller one (that allocated 55 MiB and more before the bound).
func TestYAMLAliasBytes(t *testing.T) {
	for _, tc := range []struct {
		name        string
		size, n     int
		maxAllocMiB uint64
	}{
		{"256KiB x 200", 256 << 10, 200, 16},
		{"issue 11: 1MiB x 49000", 1 << 20, 49_000, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := aliasBomb(tc.size, tc.n)
			var err error
			start := time.Now()
			alloc := allocated(func() { _, err = LoadYAML(doc) })
			elapsed := time.Since(start)
			require.Error(t, err)
			msg := err.Error()
			assert.Contains(t, msg, "config: loadBalancingConfig[")
			assert.Contains(t, msg, "keys and values hold more than 4194304 bytes after expanding YAML aliases (the limit; see WithMaxBytes)")
			assert.Less(t, alloc, tc.maxAllocMiB<<20, "allocated %d MiB", alloc>>20)
			// Generous: about 0.05 s without -race; unbounded, minutes or an OOM.
			assert.Less(t, elapsed, 20*time.Second)
		})
	}

	// Within the limit, the same document loads.
	c, err := LoadYAML(aliasBomb(1<<10, 100))
	require.NoError(t, err)
	assert.Empty(t, c.Ignored)
	_, err = Load(aliasBomb(1<<10, 100), YAML, WithMaxBytes(64<<10))
	require.ErrorContains(t, err, "more than 65536 bytes after expanding YAML aliases")
}

// TestMaxValues: the values limit holds for JSON as for YAML (it counts
// the values, not the bytes), and WithMaxValues changes it.
func TestMaxValues(t *testing.T) {
	doc := `{"loadBalancingConfig": [` + strings.Repeat(`{}, `, 99) + `{}]}`
	for _, f := range []Format{JSON, YAML} {
		_, err := Load([]byte(doc), f)
		require.NoError(t, err, f)
		_, err = Load([]byte(doc), f, WithMaxValues(102)) // the document, the list, 100 objects
		require.NoError(t, err, f)
		_, err = Load([]byte(doc), f, WithMaxValues(101))
		require.ErrorContains(t, err, "loadBalancingConfig[99]: the document holds more than 101 values", f)
		assert.ErrorContains(t, err, "(the limit; see WithMaxValues)", f)
	}
	_, err := LoadJSON([]byte(`{"loadBalancingConfig": [` + strings.Repeat(`1,`, DefaultMaxValues) + `1]}`))
	require.ErrorContains(t, err, "the document holds more than 100000 values (the limit")
}

// TestLimitOptions: a limit that is not positive is an error naming it.
func TestLimitOptions(t *testing.T) {
	for _, o := range []struct {
		opt  Option
		want string
	}{
		{WithMaxBytes(0), "config: WithMaxBytes: must be positive, got 0"},
		{WithMaxValues(-1), "config: WithMaxValues: must be positive, got -1"},
	} {
		_, err := Load([]byte(`{}`), JSON, o.opt)
		assert.EqualError(t, err, o.want)
		_, err = LoadFile("x.json", o.opt)
		assert.EqualError(t, err, o.want)
		err = WatchFile(t.Context(), "x.json", time.Second, func(*Config) error { return nil }, nil, o.opt)
		assert.EqualError(t, err, o.want)
	}
}

// TestMaxBytes: Load refuses a document longer than the limit before
// reading it, in either format.
func TestMaxBytes(t *testing.T) {
	doc := []byte(`{"loadBalancingConfig": [{"x": "` + strings.Repeat("x", DefaultMaxBytes) + `"}]}`)
	for _, f := range []Format{JSON, YAML} {
		var err error
		alloc := allocated(func() { _, err = Load(doc, f) })
		require.ErrorContains(t, err, "config: the document is larger than 4194304 bytes (the limit; see WithMaxBytes)")
		assert.Less(t, alloc, uint64(64<<10))
		_, err = Load(doc, f, WithMaxBytes(len(doc)))
		require.NoError(t, err)
		_, err = Load([]byte(`{}`), f, WithMaxBytes(1))
		require.ErrorContains(t, err, "larger than 1 bytes")
	}
}

// TestJSONMemory: the JSON path within the default limits, at its most
// expensive per input byte (a flat list of tiny values; one large string
// with escapes), allocates a bounded multiple of the input. The list
// allocated 445 MiB for a 2 MiB document before the values limit held for
// JSON.
func TestJSONMemory(t *testing.T) {
	for _, tc := range []struct {
		name        string
		doc         string
		wantErr     string
		maxAllocMiB uint64
	}{
		{"flat list", `{"loadBalancingConfig": [` + strings.Repeat(`1,`, 1<<20) + `1]}`, "more than 100000 values", 48},
		{"string", `{"loadBalancingConfig": [{"x": "` + strings.Repeat(`\u0001`, (DefaultMaxBytes-64)/6) + `"}]}`, "", 96},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			alloc := allocated(func() { _, err = LoadJSON([]byte(tc.doc)) })
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
			} else {
				assert.NoError(t, err)
			}
			assert.Less(t, alloc, tc.maxAllocMiB<<20, "allocated %d MiB", alloc>>20)
		})
	}
}

// TestDeepLongKeys: a value's path is built only for an error, so many
// values deep under long keys cost no path each (this 100 KB document
// allocated 2.5 GiB when every value built its path).
func TestDeepLongKeys(t *testing.T) {
	key := strings.Repeat("k", 1000)
	doc := `{"loadBalancingConfig": [` + strings.Repeat(`{"`+key+`": `, 60) +
		"[" + strings.Repeat("1,", 20_000) + "1]" + strings.Repeat("}", 60) + `]}`
	for _, f := range []Format{JSON, YAML} {
		var err error
		alloc := allocated(func() { _, err = Load([]byte(doc), f) })
		require.NoError(t, err, f)
		assert.Less(t, alloc, uint64(64<<20), "%v: allocated %d MiB", f, alloc>>20)
	}
}

// manyKeys is an object with n keys, inside a document if wrap (JSON, and
// YAML in flow style): in loadBalancingConfig, a free-form field, or alone
// (n unknown fields).
func manyKeys(n int, wrap bool) []byte {
	var b strings.Builder
	if wrap {
		b.WriteString(`{"loadBalancingConfig": [{"x": `)
	}
	b.WriteString(`{`)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"k` + strconv.Itoa(i) + `": 1`)
	}
	b.WriteString(`}`)
	if wrap {
		b.WriteString(`}]}`)
	}
	return []byte(b.String())
}

// fastest returns the least time of n runs of f (the least noisy figure),
// each started after a garbage collection (so that no run pays for the
// garbage of another).
func fastest(n int, f func()) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range n {
		runtime.GC()
		start := time.Now()
		f()
		best = min(best, time.Since(start))
	}
	return best
}

// TestKeysLinear: parsing time grows linearly with the number of keys
// (80,000 keys, a 1 MB document, took 8.5 s when the duplicate check
// scanned the earlier keys; 30,000, 1.2 s). Ten times the keys must cost
// well under 30 times the time; quadratic work costs 100 times.
func TestKeysLinear(t *testing.T) {
	for _, f := range []Format{JSON, YAML} {
		for _, tc := range []struct {
			name         string
			small, large []byte
		}{
			{"free-form", manyKeys(3_000, true), manyKeys(30_000, true)},
			{"unknown fields", manyKeys(3_000, false), manyKeys(30_000, false)},
		} {
			var err error
			tLarge := fastest(5, func() { _, err = Load(tc.large, f) })
			if tc.name == "free-form" {
				require.NoError(t, err, f)
			} else {
				require.ErrorContains(t, err, "k0: unknown field; k1: unknown field")
				require.ErrorContains(t, err, "; and 29980 more")
			}
			tSmall := fastest(5, func() { _, _ = Load(tc.small, f) })
			t.Logf("%v %s: 3k keys %v, 30k keys %v (x%.1f)", f, tc.name, tSmall, tLarge, float64(tLarge)/float64(tSmall))
			assert.Less(t, tLarge, 30*tSmall, "%v %s: 3k keys %v, 30k keys %v", f, tc.name, tSmall, tLarge)
		}
	}
	// A duplicate is still found among many keys, and in YAML too.
	dup := strings.Replace(string(manyKeys(30_000, true)), `}}]}`, `, "k12345": 2}}]}`, 1)
	for _, f := range []Format{JSON, YAML} {
		_, err := Load([]byte(dup), f)
		assert.ErrorContains(t, err, "loadBalancingConfig[0].x.k12345: ", f)
		assert.ErrorContains(t, err, "duplicate field", f)
	}
}

// TestErrorQuoting: a piece of the document in an error is quoted (no raw
// newline or escape can forge a log line) and truncated to a few dozen
// bytes with its length: a 10 MB unknown key made a 10 MB error.
func TestErrorQuoting(t *testing.T) {
	long := strings.Repeat("k", 1000)
	keyJSON := `{"` + strings.Repeat("k", 10<<20) + `\n2026/01/01 forged log line": 1}`
	keyYAML := `? "` + strings.Repeat("k", 1<<20) + `\n2026/01/01 forged log line"` + "\n: 1\n"
	for _, tc := range []struct {
		name string
		doc  string
		f    Format
		want string
	}{
		{"unknown key", keyJSON, JSON, `config: "kkkkk`},
		{"unknown key", keyYAML, YAML, `config: "kkkkk`},
		{"unknown key, short", `{"a\nb": 1}`, JSON, `config: "a\nb": unknown field`},
		{"key in a path", `{"methodConfig": [{"x\u001b[31m": 1}]}`, JSON, `config: methodConfig[0]."x\x1b[31m": unknown field`},
		{"empty key", `{"": 1}`, JSON, `config: "": unknown field`},
		{"service", `{"methodConfig": [{"name": [{"service": "` + long[:200] + `\n"}]}]}`, JSON, `invalid service name "kkkk`},
		{"duration", `{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "` + long[:100] + `"}}]}`, JSON, `invalid duration "kkkk`},
		{"code", `{"methodConfig": [{"name": [{}], "retryPolicy": {"retryableStatusCodes": ["` + long[:100] + `"]}}]}`, JSON, `unknown status code "kkkk`},
		{"number", `{"retryThrottling": {"maxTokens": 1` + strings.Repeat("0", 500) + `, "tokenRatio": 1}}`, JSON, `maxTokens: number 1000000`},
		{"yaml tag", "a: !" + strings.Repeat("t", 500) + " 1\n", YAML, `unsupported YAML tag "!ttt`},
		{"yaml anchor", "a: *" + strings.Repeat("a", 500) + "\n", YAML, `invalid YAML: yaml: unknown anchor`},
		{"yaml number", "retryThrottling: {maxTokens: !!int \"" + long[:500] + "\\n\"}\n", YAML, `must be a finite decimal number such as 10 or 0.5, got "kkkk`},
	} {
		t.Run(tc.name+" "+tc.f.String(), func(t *testing.T) {
			_, err := Load([]byte(tc.doc), tc.f, WithMaxBytes(32<<20))
			require.Error(t, err)
			msg := err.Error()
			assert.Contains(t, msg, tc.want)
			assert.Less(t, len(msg), 1<<10, "%.200s", msg)
			assert.NotContains(t, msg, "\n")
			assert.NotContains(t, msg, "\x1b")
			if len(tc.doc) > 10<<20 {
				assert.Contains(t, msg, `"... (10485787 bytes): unknown field`)
			}
		})
	}
}

// TestQuote: the helpers that put document text in messages.
func TestQuote(t *testing.T) {
	assert.Equal(t, `"a\nb"`, quote("a\nb"))
	assert.Equal(t, `"`+strings.Repeat("é", 32)+`"... (66 bytes)`, quote(strings.Repeat("é", 33)))
	assert.Equal(t, `"x`+strings.Repeat("é", 31)+`"... (65 bytes)`, quote("x"+strings.Repeat("é", 32)), "cut on a rune boundary")
	assert.Equal(t, `a\nb`, clean("a\nb"))
	assert.Equal(t, "x.y-z_1", show("x.y-z_1"))
	assert.Equal(t, `"x y"`, show("x y"))
	var root *loc
	assert.Equal(t, `a.b[2]."c d"."".e`, root.field("a").field("b").index(2).field("c d").field("").field("e").String())
	assert.Equal(t, "", (*loc)(nil).String())
}

// TestLoadFileMaxBytes: a file over the limit is refused without being
// read whole; WithMaxBytes raises the limit.
func TestLoadFileMaxBytes(t *testing.T) {
	name := filepath.Join(t.TempDir(), "big.json")
	doc := `{"loadBalancingConfig": [{"x": "` + strings.Repeat("x", DefaultMaxBytes) + `"}]}`
	require.NoError(t, os.WriteFile(name, []byte(doc), 0o600))
	var err error
	alloc := allocated(func() { _, err = LoadFile(name) })
	require.ErrorContains(t, err, "the document is larger than 4194304 bytes (the limit; see WithMaxBytes)")
	assert.Less(t, alloc, uint64(64<<10))
	_, err = LoadFile(name, WithMaxBytes(len(doc)))
	require.NoError(t, err)
	_, err = LoadFile(name, WithMaxBytes(len(doc)-1))
	require.Error(t, err)
}
