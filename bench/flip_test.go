package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Flip pause: N in-process two-ensemble proxies (primary: the benchmark
// ensemble; secondary: the one-server ensemble B of the dual-write
// figures), each with one client writing its own znode (setData, 100
// bytes) in a loop. All N are flipped to B at once, in two ways: the
// one-shot flip (one Server.Flip per proxy, in parallel) and the control
// plane's two-phase barrier (Hold on all, the fences raised, Swap on all,
// Release on all). A client's pause is the longest write it had in flight
// while its proxy held requests (from the request that began the flip to
// the answer that ended it); the figures are over the N clients. Beside
// them, the same N writers connected directly to ZooKeeper with no flip:
// the longest write each saw in a window as long as the flip, and every
// write's latency. The proxies' own "flip done" timings (drain,
// connections, fences, versions, each session's move) are printed below.

var (
	flipRows  [][]string
	flipMu    sync.Mutex
	flipSizes = []int{1, 10, 100}
	// flipPhases: per size, the proxies' own timings from their "flip
	// done" log lines (p50/max over the proxies).
	flipPhases []string
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
	// The writers' znodes exist on A and on B, as the snapshot copy leaves
	// them before a flip: a writer that had not written before the flip
	// (so nothing mirrored its znode) still finds it on B.
	ca, err := Connect(server)
	if err != nil {
		b.Fatal(err)
	}
	defer ca.Close()
	cb, err := Connect(dualB.Addrs()[0])
	if err != nil {
		b.Fatal(err)
	}
	defer cb.Close()
	conns := make([]*zk.Conn, len(addrs))
	for _, c := range []*zk.Conn{ca, cb} {
		ensureNode(b, c, prefix, 0)
		for i := range addrs {
			ensureNode(b, c, fmt.Sprintf("%s/w%d", prefix, i), 100)
		}
	}
	for i, a := range addrs {
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

// flipMode is how the benchmark flips its proxies.
type flipMode string

const (
	// oneShot: Server.Flip on every proxy at once (hold, drain, fence,
	// swap, release in one call per proxy; the first to reach a fence
	// raises it).
	oneShot flipMode = "one-shot"
	// barrier: the control plane's two-phase barrier (control/barrier.go)
	// without its guard and Raft commit: Hold on every proxy, then the
	// fences raised (A, then B), Swap on every proxy, Release on every
	// proxy, each step to all proxies at once.
	barrier flipMode = "barrier"
)

func benchFlipPause(b *testing.B, n int, mode flipMode) {
	phases := &phaseLog{}
	logger := slog.New(phases)
	proxies := make([]*proxytest.Proxy, n)
	addrs := make([]string, n)
	// Each run has its own fence znode: a flip raises the fence to its
	// epoch, and a fresh proxy at epoch 0 finding a raised one would move
	// to B by itself (it missed a flip) before the benchmark flips it.
	fencePath := fmt.Sprintf("/zk-migrate-fence-bench-%s-%d-%d", mode, n, time.Now().UnixNano())
	for i := range proxies {
		p, err := proxytest.Start(proxy.Config{Upstream: []string{server}, Secondary: dualB.Addrs(), Logger: logger, FencePath: fencePath})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		proxies[i], addrs[i] = p, p.Addr
	}
	// The control plane's connections to both ensembles, open before the
	// flip as the control node's are.
	fences := make([]*zkclient.Conn, 2)
	for i, ens := range [][]string{{server}, dualB.Addrs()} {
		c, err := zkclient.Dial(context.Background(), ens, zkclient.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		fences[i] = c
	}
	held := make([][2]time.Time, n)
	var failed atomic.Int64
	var took time.Duration
	steps := ""
	b.ResetTimer()
	writes := runWriters(b, addrs, fmt.Sprintf("/bench-flip-%s-%d", mode, n), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		if mode == oneShot {
			each(proxies, func(i int, p *proxytest.Proxy) {
				held[i][0] = time.Now()
				if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
					failed.Add(1)
				}
				held[i][1] = time.Now()
			})
		} else {
			t := time.Now()
			var step []time.Duration
			lap := func() { step = append(step, time.Since(t)); t = time.Now() }
			each(proxies, func(i int, p *proxytest.Proxy) {
				held[i][0] = time.Now()
				if _, err := p.Hold(ctx, 1, ensemble.Target); err != nil {
					failed.Add(1)
				}
			})
			lap()
			for _, c := range fences {
				if _, err := fence.Raise(ctx, c, fencePath, 1, ensemble.Target); err != nil {
					b.Fatal(err)
				}
			}
			lap()
			each(proxies, func(i int, p *proxytest.Proxy) {
				if err := p.Swap(ctx, 1, ensemble.Target); err != nil {
					failed.Add(1)
				}
			})
			lap()
			each(proxies, func(i int, p *proxytest.Proxy) {
				p.Release(1)
				held[i][1] = time.Now()
			})
			lap()
			steps = fmt.Sprintf("steps: hold all %s, fences %s, swap all %s, release all %s; ", ms(step[0]), ms(step[1]), ms(step[2]), ms(step[3]))
		}
		took = time.Since(start)
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
		time.Sleep(took)
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
	flipRows = append(flipRows, []string{string(mode), fmt.Sprint(n), ms(fp50), ms(fp99), ms(fmax), ms(took), fmt.Sprint(failed.Load()),
		ms(dp50), ms(dp99), ms(dmax), ms(wp99)})
	flipPhases = append(flipPhases, fmt.Sprintf("%8s %5d %s%s", mode, n, steps, phases.summary()))
}

// each calls f for every proxy at once and waits for all.
func each(proxies []*proxytest.Proxy, f func(i int, p *proxytest.Proxy)) {
	var wg sync.WaitGroup
	for i, p := range proxies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i, p)
		}()
	}
	wg.Wait()
}

func BenchmarkFlipPause(b *testing.B) {
	for _, mode := range []flipMode{oneShot, barrier} {
		for _, n := range flipSizes {
			b.Run(fmt.Sprintf("%s/proxies=%d", mode, n), func(b *testing.B) { benchFlipPause(b, n, mode) })
		}
	}
}

func printFlipTable() {
	flipMu.Lock()
	defer flipMu.Unlock()
	if len(flipRows) == 0 {
		return
	}
	fmt.Printf("\nflip pause: N in-process proxies flipped to B at once, one writer each (longest write in flight while its proxy held)\n")
	fmt.Printf("%8s %8s %12s %12s %12s %12s %7s | %12s %12s %12s %12s\n", "mode", "proxies", "pause p50", "pause p99", "pause max", "flip took", "failed",
		"direct p50", "direct p99", "direct max", "write p99")
	for _, r := range flipRows {
		fmt.Printf("%8s %8s %12s %12s %12s %12s %7s | %12s %12s %12s %12s\n", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
	}
	fmt.Println("one-shot: Server.Flip on every proxy at once; barrier: Hold on all, fences raised, Swap on all, Release on all (the control plane's barrier without its guard and Raft commit)")
	fmt.Println("direct: the same writers on ZooKeeper itself, no flip: the longest write each saw in a window as long as the flip took; write p99: every direct write")
	fmt.Println("\nflip phases, as the proxies log them (\"flip done\"; p50/max over the proxies, each since the flip began):")
	for _, l := range flipPhases {
		fmt.Println(l)
	}
}
