package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// Dual-write figures: the same operations directly, through a
// single-ensemble proxy and through a two-ensemble proxy (primary: the
// benchmark ensemble's server 1; secondary: a one-server ensemble B, so
// that the machine runs four JVMs, not six). The two-ensemble proxy's
// replies do not wait for B, but its mirror competes for the same CPUs.

var (
	dualAddr string
	dualB    *zktest.Ensemble

	dualRows  = map[string][]string{}
	dualOrder []string
)

func recordDual(name string, cols ...string) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if _, ok := dualRows[name]; !ok {
		dualOrder = append(dualOrder, name)
	}
	dualRows[name] = cols
}

// startDual starts ensemble B and a two-ensemble proxy process.
func startDual(bin string) (func(), error) {
	var err error
	dualB, err = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "bench-b"})
	if err != nil {
		return nil, err
	}
	dualAddr = freeAddr()
	cmd := exec.Command(bin, "proxy", "--listen", dualAddr, "--source", server, "--target", dualB.ConnectString(),
		"--metrics-addr", "", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		dualB.Close()
		return nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); dualB.Close() }
	for i := 0; ; i++ {
		if out, err := zktest.FourLetterWord(dualAddr, "ruok", time.Second); err == nil && out == "imok" {
			return stop, nil
		}
		if i > 100 {
			stop()
			return nil, fmt.Errorf("two-ensemble proxy did not start on %s", dualAddr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func printDualTable() {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(dualOrder) == 0 {
		return
	}
	fmt.Printf("\ndual-write: direct vs single-ensemble proxy vs two-ensemble proxy (same primary server, same run; %d CPUs)\n", runtime.NumCPU())
	fmt.Printf("%-30s %12s %12s %12s %14s\n", "measure", "direct", "proxy", "dual proxy", "dual vs direct")
	for _, name := range dualOrder {
		c := dualRows[name]
		fmt.Printf("%-30s %12s %12s %12s %14s\n", name, c[0], c[1], c[2], c[3])
	}
}

// dualPaths opens one session each: direct, single proxy, dual proxy.
func dualPaths(b *testing.B) []*zk.Conn {
	b.Helper()
	var out []*zk.Conn
	for _, a := range []string{server, proxyAddr, dualAddr} {
		c, err := Connect(a)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		out = append(out, c)
	}
	return out
}

func benchDualLatency(b *testing.B, name string, samples int, op Op) {
	conns := dualPaths(b)
	ensureNode(b, conns[0], "/bench-dual", 100)
	for i := 0; i < 200; i++ {
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
		d, p, w := lat[0].Quantile(q.q), lat[1].Quantile(q.q), lat[2].Quantile(q.q)
		b.ReportMetric(float64(d)/1e3, "direct-"+q.label+"-µs")
		b.ReportMetric(float64(p)/1e3, "proxy-"+q.label+"-µs")
		b.ReportMetric(float64(w)/1e3, "dual-"+q.label+"-µs")
		recordDual(name+" "+q.label, us(d), us(p), us(w), fmt.Sprintf("%.2fx", float64(w)/float64(d)))
	}
}

func BenchmarkDualSetDataLatency(b *testing.B) {
	data := make([]byte, 100)
	benchDualLatency(b, "setData latency", 3000, func(c *zk.Conn) error {
		_, err := c.Set("/bench-dual", data, -1)
		return err
	})
}

func BenchmarkDualCreateLatency(b *testing.B) {
	var n atomic.Int64
	benchDualLatency(b, "create latency", 2000, func(c *zk.Conn) error {
		_, err := c.Create(fmt.Sprintf("/bench-dual/c%d", n.Add(1)), []byte("x"), 0, zk.WorldACL(zk.PermAll))
		return err
	})
}

func BenchmarkDualPipelinedSetData(b *testing.B) {
	const conns, inflight, rounds = 4, 32, 3
	window := 2 * time.Second
	var sets [3][]*zk.Conn
	for i := 0; i < conns; i++ {
		p := dualPaths(b)
		for j := range sets {
			sets[j] = append(sets[j], p[j])
		}
	}
	ensureNode(b, sets[0][0], "/bench-dual-tput", 100)
	data := make([]byte, 100)
	op := func(c *zk.Conn) error {
		_, err := c.Set("/bench-dual-tput", data, -1)
		return err
	}
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
	b.ReportMetric(rate[1], "proxy-ops/s")
	b.ReportMetric(rate[2], "dual-ops/s")
	recordDual("pipelined setData (4x32)", fmt.Sprintf("%.0f/s", rate[0]), fmt.Sprintf("%.0f/s", rate[1]), fmt.Sprintf("%.0f/s", rate[2]), fmt.Sprintf("%.3fx", rate[2]/rate[0]))
}
