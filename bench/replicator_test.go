package bench

import (
	"context"
	"fmt"
	"path"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// Replicator benchmarks: snapshot copy rate against a naive serial copy of
// the same tree, and continuous-sync lag under a steady writer. They use a
// second ensemble, B, started on first use.

var (
	ensBOnce sync.Once
	ensB     *zktest.Ensemble
	ensBErr  error
)

func targetEnsemble(b *testing.B) *zktest.Ensemble {
	ensBOnce.Do(func() {
		ensB, ensBErr = zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "bench-b"})
	})
	if ensBErr != nil {
		b.Fatal(ensBErr)
	}
	return ensB
}

func dialN(b *testing.B, addrs []string, n int) []*zkclient.Conn {
	var out []*zkclient.Conn
	for i := 0; i < n; i++ {
		c, err := zkclient.Dial(context.Background(), addrs, zkclient.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		out = append(out, c)
	}
	return out
}

// buildTree makes dirs x leaves znodes of 100 bytes under root on A.
func buildTree(b *testing.B, c *zkclient.Conn, root string, dirs, leaves int) int {
	ops := []zkclient.MultiOp{{Op: jute.OpCreate, Req: &jute.CreateRequest{Path: root, ACL: zkclient.OpenACL}}}
	for d := 0; d < dirs; d++ {
		dir := fmt.Sprintf("%s/d%04d", root, d)
		ops = append(ops, zkclient.MultiOp{Op: jute.OpCreate, Req: &jute.CreateRequest{Path: dir, ACL: zkclient.OpenACL}})
		for j := 0; j < leaves; j++ {
			ops = append(ops, zkclient.MultiOp{Op: jute.OpCreate, Req: &jute.CreateRequest{
				Path: fmt.Sprintf("%s/n%03d", dir, j), Data: make([]byte, 100), ACL: zkclient.OpenACL}})
		}
	}
	var calls []*zkclient.Call
	for i := 0; i < len(ops); i += 500 {
		calls = append(calls, c.GoMulti(ops[i:min(i+500, len(ops))]))
	}
	for _, call := range calls {
		<-call.Done
		if _, err := zkclient.MultiErr(call); err != nil {
			b.Fatal(err)
		}
	}
	return len(ops)
}

func BenchmarkSnapshotCopy(b *testing.B) {
	ensB := targetEnsemble(b)
	a := dialN(b, ens.Addrs(), 1)[0]
	root := fmt.Sprintf("/bench-snap-%d", time.Now().UnixNano())
	n := buildTree(b, a, root, 500, 99) // 50,001 znodes of 100 bytes
	ep := replicator.Endpoints{Source: dialN(b, ens.Addrs(), 4), Target: dialN(b, ensB.Addrs(), 4)}
	b.ResetTimer()
	res, err := replicator.Sync(context.Background(), ep, []string{root}, replicator.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	rate := float64(res.Nodes) / res.Elapsed.Seconds()
	mbs := float64(res.Bytes) / (1 << 20) / res.Elapsed.Seconds()

	// The naive serial copy of a 5,000-znode part of the same tree.
	src, _, err := zk.Connect(ens.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, _, err := zk.Connect(ensB.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	naiveRoot := root + "-naive"
	for _, p := range []string{naiveRoot, naiveRoot + root} {
		if _, err := dst.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	copied := 0
	for d := 0; d < 50; d++ {
		m, err := naiveCopyInto(src, dst, fmt.Sprintf("%s/d%04d", root, d), naiveRoot)
		if err != nil {
			b.Fatal(err)
		}
		copied += m
	}
	naive := float64(copied) / time.Since(start).Seconds()
	b.ReportMetric(rate, "znodes/s")
	b.ReportMetric(naive, "naive-znodes/s")
	record(fmt.Sprintf("snapshot copy (%dk x 100 B)", n/1000), "-", fmt.Sprintf("naive %.0f/s", naive),
		fmt.Sprintf("%.0f/s %.1fMB/s", rate, mbs), fmt.Sprintf("%.0fx naive", rate/naive))
}

// naiveCopyInto is the serial approach of zk_shell mirror and burry: one
// request at a time, depth first. It copies the subtree p of src to
// dstRoot+p on dst, whose parent must exist.
func naiveCopyInto(src, dst *zk.Conn, p, dstRoot string) (int, error) {
	data, _, err := src.Get(p)
	if err != nil {
		return 0, err
	}
	acl, _, err := src.GetACL(p)
	if err != nil {
		return 0, err
	}
	if _, err := dst.Create(dstRoot+p, data, 0, acl); err != nil && err != zk.ErrNodeExists {
		return 0, err
	}
	kids, _, err := src.Children(p)
	if err != nil {
		return 0, err
	}
	n := 1
	for _, k := range kids {
		m, err := naiveCopyInto(src, dst, path.Join(p, k), dstRoot)
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// benchLag runs continuous sync while a writer updates znodes on A at the
// given rate, and reports the heartbeat lag quantiles and the rate reached.
func benchLag(b *testing.B, rate int) {
	ensB := targetEnsemble(b)
	root := fmt.Sprintf("/bench-lag-%d-%d", rate, time.Now().UnixNano())
	a := dialN(b, ens.Addrs(), 1)[0]
	const keys = 200
	buildTree(b, a, root, 1, keys)
	var mu sync.Mutex
	var lags []time.Duration
	var measuring atomic.Bool
	c, err := replicator.NewContinuous(replicator.ContinuousConfig{
		Dial: func(ctx context.Context, side replicator.Side, resume *zkclient.Conn) (*zkclient.Conn, error) {
			addrs := ens.Addrs()
			if side == replicator.SideB {
				addrs = ensB.Addrs()
			}
			o := zkclient.Options{}
			if resume != nil {
				o.SessionID, o.Passwd = resume.SessionID(), resume.Passwd()
			}
			return zkclient.Dial(ctx, addrs, o)
		},
		Roots: []string{root}, InitialSync: true, Heartbeat: 20 * time.Millisecond, LagAlertAfter: time.Hour,
		OnLag: func(from replicator.Side, lag time.Duration) {
			if from == replicator.SideA && measuring.Load() {
				mu.Lock()
				lags = append(lags, lag)
				mu.Unlock()
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(2 * time.Second) // initial copy and first reconcile

	writers := dialN(b, ens.Addrs(), 4)
	const window = 5 * time.Second
	var written atomic.Int64
	measuring.Store(true)
	start := time.Now()
	var wg sync.WaitGroup
	for w, conn := range writers {
		wg.Add(1)
		go func(w int, conn *zkclient.Conn) {
			defer wg.Done()
			per := rate / len(writers)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			data := make([]byte, 100)
			for i := 0; time.Since(start) < window; {
				<-tick.C
				due := int(time.Since(start).Seconds()*float64(per)) - i
				var calls []*zkclient.Call
				for ; due > 0; due-- {
					p := fmt.Sprintf("%s/d0000/n%03d", root, (w*1000+i)%keys)
					calls = append(calls, conn.Go(jute.OpSetData, &jute.SetDataRequest{Path: p, Data: data, Version: -1}, &jute.SetDataResponse{}))
					i++
				}
				for _, call := range calls {
					<-call.Done
					if call.Err == nil {
						written.Add(1)
					}
				}
			}
		}(w, conn)
	}
	wg.Wait()
	reached := float64(written.Load()) / time.Since(start).Seconds()
	measuring.Store(false)
	mu.Lock()
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	l := Latencies(lags)
	mu.Unlock()
	b.ReportMetric(reached, "updates/s")
	b.ReportMetric(float64(l.Quantile(0.5))/1e6, "lag-p50-ms")
	b.ReportMetric(float64(l.Quantile(0.99))/1e6, "lag-p99-ms")
	record(fmt.Sprintf("sync lag at %dk updates/s", rate/1000), fmt.Sprintf("%.0f/s done", reached), "-",
		fmt.Sprintf("p50 %.1fms", float64(l.Quantile(0.5))/1e6), fmt.Sprintf("p99 %.1fms (%d)", float64(l.Quantile(0.99))/1e6, len(l)))
}

func BenchmarkSyncLag2k(b *testing.B) { benchLag(b, 2000) }

func BenchmarkSyncLag10k(b *testing.B) { benchLag(b, 10000) }

func BenchmarkSyncLag20k(b *testing.B) { benchLag(b, 20000) }
