package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// The benchmarks start a real three-server ensemble and the zk-migrate
// binary as a separate proxy process (as deployed, a sidecar), pin both the
// direct and the proxied clients to the same ZooKeeper server, and compare.
// Run: make bench. Results are collected and printed as one table at the end.

var (
	ens       *zktest.Ensemble
	proxyAddr string
	relayAddr string // a plain byte relay (io.Copy), the floor for any Go proxy
	proxyPID  int
	server    string // the one ZooKeeper server both paths use

	resultsMu sync.Mutex
	results   = map[string][]string{}
	order     []string
)

func record(name string, cols ...string) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if _, ok := results[name]; !ok {
		order = append(order, name)
	}
	results[name] = cols
}

func TestMain(m *testing.M) {
	if l := os.Getenv("ZKM_BENCH_RELAY_LISTEN"); l != "" {
		relay(l, os.Getenv("ZKM_BENCH_RELAY_UPSTREAM")) // re-executed as the baseline relay
		return
	}
	flagBench := false
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.bench") {
			flagBench = true
		}
	}
	if !flagBench && os.Getenv("ZKM_SOAK") == "" {
		os.Exit(m.Run()) // plain `go test ./...`: nothing here runs
	}
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	var err error
	ens, err = zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "bench"})
	if err != nil {
		return 0, err
	}
	defer ens.Close()
	server = ens.Server(1).Addr()
	dir, err := os.MkdirTemp("", "zkm-bench-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "zk-migrate")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/zk-migrate").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build proxy: %v\n%s", err, out)
	}
	proxyAddr = freeAddr()
	cmd := exec.Command(bin, "proxy", "--listen", proxyAddr, "--upstream", server, "--metrics-addr", "", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	proxyPID = cmd.Process.Pid
	for i := 0; ; i++ {
		if out, err := zktest.FourLetterWord(proxyAddr, "ruok", time.Second); err == nil && out == "imok" {
			break
		}
		if i > 100 {
			return 0, fmt.Errorf("proxy did not start on %s", proxyAddr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopDual, err := startDual(bin)
	if err != nil {
		return 0, err
	}
	defer stopDual()
	stopTLS, err := startTLS(bin)
	if err != nil {
		return 0, err
	}
	defer stopTLS()
	relayAddr = freeAddr()
	rcmd := exec.Command(os.Args[0])
	rcmd.Env = append(os.Environ(), "ZKM_BENCH_RELAY_LISTEN="+relayAddr, "ZKM_BENCH_RELAY_UPSTREAM="+server)
	if err := rcmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = rcmd.Process.Kill(); _ = rcmd.Wait() }()
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", relayAddr); err == nil {
			c.Close()
			break
		}
		if i > 100 {
			return 0, fmt.Errorf("relay did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	code := m.Run()
	printTable()
	printDualTable()
	printTLSTable()
	printFlipTable()
	return code, nil
}

func freeAddr() string {
	addr, err := zktest.StableAddr() // below the ephemeral range, see StablePort
	if err != nil {
		panic(err)
	}
	return addr
}

// relay is the baseline: bytes copied both ways, nothing decoded.
func relay(listen, upstream string) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			_, _ = io.Copy(c, u)
			c.Close()
		}()
	}
}

func printTable() {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(order) == 0 {
		return
	}
	fmt.Printf("\nzk-migrate proxy vs direct to ZooKeeper (same server, same run; %d CPUs, %s/%s)\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("%-30s %12s %12s %12s %14s\n", "measure", "direct", "plain relay", "zk-migrate", "vs direct")
	for _, name := range order {
		c := results[name]
		fmt.Printf("%-30s %12s %12s %12s %14s\n", name, c[0], c[1], c[2], c[3])
	}
}

// paths opens one session each: direct, through the plain relay, through
// the proxy.
func paths(b *testing.B) []*zk.Conn {
	b.Helper()
	var out []*zk.Conn
	for _, a := range []string{server, relayAddr, proxyAddr} {
		c, err := Connect(a)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		out = append(out, c)
	}
	return out
}

func ensureNode(b *testing.B, c *zk.Conn, path string, size int) {
	b.Helper()
	if _, err := c.Create(path, make([]byte, size), 0, zk.WorldACL(zk.PermAll)); err != nil && err != zk.ErrNodeExists {
		b.Fatal(err)
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

// latency benchmarks alternate one direct and one proxied operation per
// sample. b.N is ignored beyond the first run: the sample count is fixed so
// the quantiles mean the same thing every run.
func benchLatency(b *testing.B, name string, samples int, op Op) {
	conns := paths(b)
	ensureNode(b, conns[0], "/bench-latency", 100)
	for i := 0; i < 200; i++ { // warm up every path
		for _, c := range conns {
			_ = op(c)
		}
	}
	b.ResetTimer()
	lat, err := AlternatingLatency(conns, op, samples)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for _, q := range []struct {
		label string
		q     float64
	}{{"p50", 0.50}, {"p99", 0.99}} {
		d, r, p := lat[0].Quantile(q.q), lat[1].Quantile(q.q), lat[2].Quantile(q.q)
		b.ReportMetric(float64(d)/1e3, "direct-"+q.label+"-µs")
		b.ReportMetric(float64(r)/1e3, "relay-"+q.label+"-µs")
		b.ReportMetric(float64(p)/1e3, "proxy-"+q.label+"-µs")
		record(name+" "+q.label, us(d), us(r), us(p), "+"+us(p-d))
	}
}

func BenchmarkGetDataLatency(b *testing.B) {
	benchLatency(b, "getData latency", 5000, func(c *zk.Conn) error {
		_, _, err := c.Get("/bench-latency")
		return err
	})
}

func BenchmarkSetDataLatency(b *testing.B) {
	data := make([]byte, 100)
	benchLatency(b, "setData latency", 3000, func(c *zk.Conn) error {
		_, err := c.Set("/bench-latency", data, -1)
		return err
	})
}

// benchThroughput alternates windows of pipelined load on the direct and
// the proxied path and reports the mean rate of each.
func benchThroughput(b *testing.B, name string, op Op) {
	const conns, inflight, rounds = 4, 32, 3
	window := 2 * time.Second
	var sets [3][]*zk.Conn
	for i := 0; i < conns; i++ {
		p := paths(b)
		for j := range sets {
			sets[j] = append(sets[j], p[j])
		}
	}
	ensureNode(b, sets[0][0], "/bench-tput", 100)
	b.ResetTimer()
	var rate [3]float64
	for r := 0; r < rounds; r++ {
		for i := range sets {
			v, err := Pipelined(sets[i], inflight, op, window)
			if err != nil {
				b.Fatal(err)
			}
			rate[i] += v / rounds
		}
	}
	b.StopTimer()
	b.ReportMetric(rate[0], "direct-ops/s")
	b.ReportMetric(rate[1], "relay-ops/s")
	b.ReportMetric(rate[2], "proxy-ops/s")
	record(name, fmt.Sprintf("%.0f/s", rate[0]), fmt.Sprintf("%.0f/s", rate[1]), fmt.Sprintf("%.0f/s", rate[2]), fmt.Sprintf("%.3fx", rate[2]/rate[0]))
}

func BenchmarkPipelinedGetData(b *testing.B) {
	benchThroughput(b, "pipelined getData (4x32)", func(c *zk.Conn) error {
		_, _, err := c.Get("/bench-tput")
		return err
	})
}

func BenchmarkPipelinedSetData(b *testing.B) {
	data := make([]byte, 100)
	benchThroughput(b, "pipelined setData (4x32)", func(c *zk.Conn) error {
		_, err := c.Set("/bench-tput", data, -1)
		return err
	})
}

// BenchmarkSessions1000 opens 1,000 sessions through the proxy (each its own
// upstream session) and reports the proxy process's resident memory.
func BenchmarkSessions1000(b *testing.B) {
	const n = 1000
	before, err := RSSBytes(proxyPID)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	conns := make([]*zk.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var firstErr error
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := Connect(proxyAddr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = err
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("%d sessions opened, then: %v", len(conns), firstErr)
	}
	opened := time.Since(start)
	// Every session does one request so all paths are warm.
	for _, c := range conns {
		if _, _, err := c.Exists("/"); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	after, err := RSSBytes(proxyPID)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(after)/(1<<20), "proxy-RSS-MB")
	b.ReportMetric(opened.Seconds(), "open-s")
	record("1000 sessions: proxy RSS", "-", "-", fmt.Sprintf("%.1f MB", float64(after)/(1<<20)), fmt.Sprintf("idle %.1f MB", float64(before)/(1<<20)))
}
