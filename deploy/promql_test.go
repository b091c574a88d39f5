package deploy

import (
	"bufio"
	"io"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var (
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promTokens   = regexp.MustCompile(`[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?[a-zA-Z0-9]*|[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges and grouping
// clauses are removed that are neither keywords nor called as functions.
func metricNames(expr string) []string {
	s := promStrings.ReplaceAllString(expr, `""`)
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	for _, loc := range promTokens.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || promKeywords[strings.ToLower(tok)] {
			continue
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") {
			continue // a function or an aggregation
		}
		seen[tok] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// families reads the metric families of a Prometheus text exposition from
// its "# TYPE name type" lines: name -> type.
func families(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = f[3]
		}
	}
	return out, sc.Err()
}

// exported says whether name is a series of one of fams: a family itself,
// or a histogram's or summary's _bucket, _sum or _count series.
func exported(name string, fams map[string]string) bool {
	if _, ok := fams[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if t := fams[base]; t == "histogram" || (t == "summary" && suffix != "_bucket") {
				return true
			}
		}
	}
	return false
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`histogram_quantile(0.99, sum by (le, op) (rate(zkmigrate_proxy_request_duration_seconds_bucket[$__rate_interval])))`: "zkmigrate_proxy_request_duration_seconds_bucket",
		`count(up{job="zk-migrate-proxy"} == 0) or vector(0)`:                                                                 "up",
		`sum by (instance, direction) (rate(zkmigrate_replicator_lag_seconds_count[1m])) == 0`:                                "zkmigrate_replicator_lag_seconds_count",
		`a_total / on (instance) group_left (x) b{l="by (c)"} > bool 1e-3 unless c offset 5m`:                                 "a_total b c",
		`max(deriv(zkmigrate_replicator_snapshot_written_ops[1m]))`:                                                           "zkmigrate_replicator_snapshot_written_ops",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%s) = %q, want %q", expr, got, want)
		}
	}
	fams, err := families(strings.NewReader("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE c_total counter\nc_total 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"h_bucket": true, "h_count": true, "h": true, "c_total": true, "c": false, "c_total_count": false, "x": false} {
		if exported(name, fams) != want {
			t.Errorf("exported(%q) = %v, want %v", name, !want, want)
		}
	}
}
