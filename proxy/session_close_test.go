package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// closeDropper is a proxy.Config.Dial that loses the first closeSession
// sent to each of the given ensembles: the connection is cut just before
// the request would leave, as when the server dies with it (the server
// never sees it; the session lives on there).
type closeDropper struct {
	mu      sync.Mutex
	budget  map[string]*atomic.Int32 // by server address: the ensemble's budget
	dropped atomic.Int32
}

func newCloseDropper(ensembles ...[]string) *closeDropper {
	d := &closeDropper{budget: map[string]*atomic.Int32{}}
	for _, addrs := range ensembles {
		b := new(atomic.Int32)
		b.Store(1)
		for _, a := range addrs {
			d.budget[a] = b
		}
	}
	return d
}

func (d *closeDropper) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	b := d.budget[addr]
	d.mu.Unlock()
	if b == nil {
		return c, nil
	}
	return &dropConn{Conn: c, d: d, budget: b}, nil
}

// closeFrame is a closeSession request: length 8, any xid, type -11.
var closeFrameLen, closeFrameType = []byte{0, 0, 0, 8}, []byte{0xff, 0xff, 0xff, 0xf5}

type dropConn struct {
	net.Conn
	d      *closeDropper
	budget *atomic.Int32
}

func (c *dropConn) Write(p []byte) (int, error) {
	for i := 0; i+12 <= len(p); i++ {
		if bytes.Equal(p[i:i+4], closeFrameLen) && bytes.Equal(p[i+8:i+12], closeFrameType) && c.budget.Add(-1) >= 0 {
			n, _ := c.Conn.Write(p[:i])
			c.Conn.Close()
			c.d.dropped.Add(1)
			return n, errors.New("closeSession lost with the connection (test)")
		}
	}
	return c.Conn.Write(p)
}

// TestLostCloseIsRetried: a client closes its session through a
// two-ensemble proxy and both closes the proxy sends upstream are lost
// with their connections (the relay's on the primary, the shadow's on the
// secondary), as when a server dies with the close uncommitted. The
// proxy closes both sessions again on another connection, so the client's
// ephemeral goes from both ensembles at once, not a session timeout (30 s)
// later. Before, the relay ended on the lost connection as if the close
// had been answered, and the shadow took zkclient's Close (nil on a lost
// connection) for an acknowledged close: in the chaos demo a stopped
// master's json.info_ outlived it on the ensembles whose leader was
// killed at that moment.
func TestLostCloseIsRetried(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	drop := newCloseDropper(ens.Addrs(), b.Addrs())
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Logger: testLogger(t), Dial: drop.Dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 30*time.Second)
	eph := root + "/json.info_0000000001"
	if _, err := c.Create(eph, []byte("master"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	ca := directConn(t)
	closed := time.Now()
	c.Close()
	for {
		onA, _, errA := ca.Exists(eph)
		onB, _, errB := cb.Exists(eph)
		if err := errors.Join(errA, errB); err != nil {
			t.Fatal(err)
		}
		if !onA && !onB {
			t.Logf("the closed client's ephemeral went from both ensembles %v after the close", time.Since(closed).Round(time.Millisecond))
			break
		}
		if time.Since(closed) > 10*time.Second {
			t.Fatalf("the closed client's ephemeral is still on %v %v after its close (30 s session): a lost close was not retried",
				slices.DeleteFunc([]string{"A", "B"}, func(s string) bool { return s == "A" && !onA || s == "B" && !onB }), time.Since(closed).Round(time.Second))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := drop.dropped.Load(); n != 2 {
		t.Fatalf("%d closes lost, want 2 (the relay's and the shadow's)", n)
	}
	if v := metricValue(t, p.Registry, "zkmigrate_proxy_upstream_reconnects_total", "result", "close_retried"); v != 1 {
		t.Fatalf("close_retried = %v, want 1", v)
	}
}
