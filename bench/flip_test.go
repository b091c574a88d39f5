package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// Flip pause: N in-process two-ensemble proxies (primary: the benchmark
// ensemble; secondary: the one-server ensemble B of the dual-write
// figures), each with one client writing its own znode (setData, 100
// bytes) in a loop. All N are flipped to B at once, as the control plane's
// barrier asks them (one request per proxy, in parallel). A client's pause
// is the longest write it had in flight while its proxy held requests;
// the figures are over the N clients. Beside them, the same N writers
// connected directly to ZooKeeper with no flip: the longest write each saw
// in a window as long as the flip, and every write's latency.

var (
	flipRows  [][]string
	flipMu    sync.Mutex
	flipSizes = []int{1, 10, 100}
)

// timedWrite is one write's start and end.
type timedWrite struct{ start, end time.Time }

// writeLoop writes path on c until stop closes and returns every write.
func writeLoop(c *zk.Conn, path string, stop <-chan struct{}) ([]timedWrite, error) {
	data := make([]byte, 100)
	var out []timedWrite
	for {
		select {
		case <-stop:
			return out, nil
		default:
		}
		start := time.Now()
		if _, err := c.Set(path, data, -1); err != nil {
			return out, fmt.Errorf("set %s: %w", path, err)
		}
		out = append(out, timedWrite{start, time.Now()})
	}
}

// longestIn returns the longest write of ws in flight at some moment of
// [from, to].
func longestIn(ws []timedWrite, from, to time.Time) time.Duration {
	var m time.Duration
	for _, w := range ws {
		if w.end.Before(from) || w.start.After(to) {
			continue
		}
		if d := w.end.Sub(w.start); d > m {
			m = d
		}
	}
	return m
}

func sortedQ(ds []time.Duration) (p50, p99, mx time.Duration) {
	l := Latencies(append([]time.Duration(nil), ds...))
	sort.Slice(l, func(a, b int) bool { return l[a] < l[b] })
	return l.Quantile(0.5), l.Quantile(0.99), l.Quantile(1)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// runWriters runs one writer per address on its own znode, calls during
// after warm-up, keeps writing for tail, and returns each writer's writes.
func runWriters(b *testing.B, addrs []string, prefix string, during func(), tail time.Duration) [][]timedWrite {
	b.Helper()
	ca, err := Connect(server)
	if err != nil {
		b.Fatal(err)
	}
	defer ca.Close()
	ensureNode(b, ca, prefix, 0)
	conns := make([]*zk.Conn, len(addrs))
	for i, a := range addrs {
		ensureNode(b, ca, fmt.Sprintf("%s/w%d", prefix, i), 100)
		if conns[i], err = Connect(a); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	stop := make(chan struct{})
	writes := make([][]timedWrite, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writes[i], errs[i] = writeLoop(c, fmt.Sprintf("%s/w%d", prefix, i), stop)
		}()
	}
	time.Sleep(time.Second) // warm-up: sessions, shadow sessions, mirror readers
	during()
	time.Sleep(tail)
	close(stop)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatalf("a writer saw an error: %v", err)
		}
	}
	return writes
}

func benchFlipPause(b *testing.B, n int) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	proxies := make([]*proxytest.Proxy, n)
	addrs := make([]string, n)
	for i := range proxies {
		p, err := proxytest.Start(proxy.Config{Upstream: []string{server}, Secondary: dualB.Addrs(), Logger: logger})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		proxies[i], addrs[i] = p, p.Addr
	}
	held := make([][2]time.Time, n)
	failed := 0
	var barrier time.Duration
	b.ResetTimer()
	writes := runWriters(b, addrs, fmt.Sprintf("/bench-flip-%d", n), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i, p := range proxies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := time.Now()
				err := p.Flip(ctx, 1, ensemble.Target)
				held[i] = [2]time.Time{s, time.Now()}
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		barrier = time.Since(start)
	}, time.Second)
	b.StopTimer()
	pauses := make([]time.Duration, n)
	for i := range writes {
		pauses[i] = longestIn(writes[i], held[i][0], held[i][1])
	}
	fp50, fp99, fmax := sortedQ(pauses)

	// Direct: the same number of writers on ZooKeeper itself, no flip; the
	// longest write each saw in a window as long as the barrier.
	direct := make([]string, n)
	for i := range direct {
		direct[i] = server
	}
	var window [2]time.Time
	dw := runWriters(b, direct, fmt.Sprintf("/bench-flip-direct-%d", n), func() {
		window[0] = time.Now()
		time.Sleep(barrier)
		window[1] = time.Now()
	}, time.Second)
	dpause := make([]time.Duration, n)
	var all []time.Duration
	for i := range dw {
		dpause[i] = longestIn(dw[i], window[0], window[1])
		for _, w := range dw[i] {
			all = append(all, w.end.Sub(w.start))
		}
	}
	dp50, dp99, dmax := sortedQ(dpause)
	_, wp99, _ := sortedQ(all)
	b.ReportMetric(float64(fp99)/1e6, "flip-pause-p99-ms")
	b.ReportMetric(float64(fmax)/1e6, "flip-pause-max-ms")
	flipMu.Lock()
	defer flipMu.Unlock()
	flipRows = append(flipRows, []string{fmt.Sprint(n), ms(fp50), ms(fp99), ms(fmax), ms(barrier), fmt.Sprint(failed),
		ms(dp50), ms(dp99), ms(dmax), ms(wp99)})
}

func BenchmarkFlipPause(b *testing.B) {
	for _, n := range flipSizes {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) { benchFlipPause(b, n) })
	}
}

func printFlipTable() {
	flipMu.Lock()
	defer flipMu.Unlock()
	if len(flipRows) == 0 {
		return
	}
	fmt.Printf("\nflip pause: N in-process proxies flipped to B at once, one writer each (longest write in flight while its proxy held)\n")
	fmt.Printf("%8s %12s %12s %12s %12s %7s | %12s %12s %12s %12s\n", "proxies", "pause p50", "pause p99", "pause max", "barrier", "failed",
		"direct p50", "direct p99", "direct max", "write p99")
	for _, r := range flipRows {
		fmt.Printf("%8s %12s %12s %12s %12s %7s | %12s %12s %12s %12s\n", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
	}
	fmt.Println("direct: the same writers on ZooKeeper itself, no flip: the longest write each saw in a window as long as the barrier; write p99: every direct write")
}
