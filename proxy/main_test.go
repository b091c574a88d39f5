package proxy_test

import (
	"bufio"
	"flag"
	"log/slog"
	"net"

	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// ens is the real three-server ensemble shared by the package's tests. Tests
// that kill servers restart them before they end.
var ens *zktest.Ensemble

func TestMain(m *testing.M) {
	var err error
	ens, err = zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "proxy"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start ensemble:", err)
		os.Exit(1)
	}
	code := m.Run()
	ens.Close()
	if ensB != nil {
		ensB.Close()
	}
	secure.close()
	os.Exit(code)
}

var rootSeq atomic.Int64

// testRoot creates a fresh persistent znode for one test, directly on the
// ensemble, and returns its path.
// testFence is the test's own fence znode (proxy.Config.FencePath), so
// the epochs one test raises do not fence the next test's proxies.
func testFence(t *testing.T) string {
	return "/fence-" + strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
}

func testRoot(t *testing.T) string {
	t.Helper()
	c := directConn(t)
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	p := fmt.Sprintf("/%s-%d", name, rootSeq.Add(1))
	if _, err := c.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("create test root %s: %v", p, err)
	}
	return p
}

// twoEnsembles runs every test that starts its proxy with startProxy (the
// go-zookeeper, kazoo, C client and zkCli tests among them) through a
// two-ensemble proxy, the secondary being ensB:
//
//	go test ./proxy/ -args -two-ensembles     (make test-dual)
var twoEnsembles = flag.Bool("two-ensembles", false, "run the startProxy tests through a two-ensemble proxy")

func startProxy(t *testing.T) *proxytest.Proxy {
	t.Helper()
	cfg := proxy.Config{Upstream: ens.Addrs(), Logger: testLogger(t)}
	if *twoEnsembles {
		cfg.Secondary = secondary(t).Addrs()
	}
	p, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// connect opens a go-zookeeper session to addrs and waits until it has one.
func connect(t *testing.T, addrs []string, timeout time.Duration) (*zk.Conn, <-chan zk.Event) {
	t.Helper()
	c, ev, err := zk.Connect(addrs, timeout, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	deadline := time.After(15 * time.Second)
	for c.State() != zk.StateHasSession {
		select {
		case <-ev:
		case <-deadline:
			t.Fatalf("no session through %v (state %v)", addrs, c.State())
		}
	}
	return c, ev
}

func directConn(t *testing.T) *zk.Conn {
	c, _ := connect(t, ens.Addrs(), 10*time.Second)
	return c
}

func waitEvent(t *testing.T, ch <-chan zk.Event, d time.Duration) zk.Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(d):
		t.Fatalf("no watch event within %v", d)
		return zk.Event{}
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// metricValue reads one counter or gauge from reg; labels are name, value
// pairs that must all match.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// testLogger sends the proxy's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// killUpstreamOf SIGKILLs the ensemble server that the proxy attached
// session sid to, restarts it when the test ends, and returns its address.
func killUpstreamOf(t *testing.T, p *proxytest.Proxy, sid int64) string {
	t.Helper()
	addr, ok := p.SessionUpstream(sid)
	if !ok {
		t.Fatalf("proxy does not know session 0x%x", sid)
	}
	var victim *zktest.Server
	for _, s := range ens.Servers {
		if s.Addr() == addr {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("upstream %s is not an ensemble server", addr)
	}
	if err := ens.Kill(victim.ID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ens.Restart(context.Background(), victim.ID); err != nil {
			t.Errorf("restart server %d: %v", victim.ID, err)
		}
	})
	return addr
}

// retryWrite repeats a write until the ensemble accepts it (after a server
// kill it may be electing a leader).
func retryWrite(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: ensemble did not accept it within 30s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
