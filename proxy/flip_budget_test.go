package proxy_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/faultnet"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestSwapIsBoundedByThePauseBudget: B is reached through a faultnet hop
// that, as the flip begins, delays every byte by 3 s each way (B has
// become very slow to answer). The drain and the version read go through
// the proxy's standby connection to B, opened before the delay and not
// through the hop, so they fit the budget; the sessions' moves (the zxid
// probe on the shadow's connection, or a resume on a new one) go through
// the hop. The pause must still end within the budget the proxy
// advertises (a third of the 6 s session timeout) and its floor (a
// quarter of the budget), before the 2/3 of the timeout after which a
// client gives up on a silent server (asserted), and no session may
// expire: the sessions not moved in time are
// told to reconnect (ConnectionLoss), loudly, and find their sessions,
// ephemerals and data on B. Without the bound the pause lasted as long as
// the probe's 5 s deadline and a dial (over 6 s here).
func TestSwapIsBoundedByThePauseBudget(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	hop, err := faultnet.Listen("127.0.0.1:0", b.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hop.Close() })
	// direct: a dial to the hop goes straight to B (the standby, below).
	var direct atomic.Bool
	var directDials atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == hop.Addr() && direct.Load() {
			directDials.Add(1)
			addr = b.Addrs()[0]
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	fencePath := "/fence" + strings.ReplaceAll(root, "/", "_") // one per run: the flip raises it
	p, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: []string{hop.Addr()},
		Dial: dial, DialTimeout: 10 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A hold with no session opens the standby connection to B, directly.
	direct.Store(true)
	if _, err := p.Hold(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	for directDials.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the standby connection to B was never dialed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	direct.Store(false)
	p.Release(1)

	const clients = 3
	const timeout = 6 * time.Second
	var cs []*zk.Conn
	var evs []<-chan zk.Event
	for i := 0; i < clients; i++ {
		c, ev := connect(t, []string{p.Addr}, timeout)
		if _, err := c.Create(root+"/eph-"+string(rune('a'+i)), []byte("x"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		cs, evs = append(cs, c), append(evs, ev)
	}
	waitMirrored(t, p)

	hop.SetDelay(3 * time.Second)
	start := time.Now()
	err = p.Flip(ctx, 1, ensemble.Target)
	pause := time.Since(start)
	hop.SetDelay(0)
	if err != nil {
		t.Fatal(err)
	}
	// The budget is a third of the timeout, the floor a quarter of it
	// more; a client gives up on a silent server after 2/3 of it.
	budget := timeout / 3
	if pause > 2*timeout/3 {
		t.Fatalf("the flip held requests for %v with B slow (budget %v): clients give up on a server silent for %v", pause, budget, 2*timeout/3)
	}
	t.Logf("pause %v with B 3 s away (budget %v)", pause, budget)
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_flip_session_faults_total", "what", "not_moved_deadline"); got < 1 {
		t.Fatalf("flip_session_faults_total{not_moved_deadline} = %v, want the sessions not moved counted", got)
	}
	for i, c := range cs {
		name := root + "/eph-" + string(rune('a'+i))
		retryWrite(t, "write after the flip", func() error {
			_, err := c.Set(name, []byte("after"), -1)
			return err
		})
		serving, _ := p.ServingSession(c.SessionID())
		d, st, err := cb.Get(name)
		if err != nil || string(d) != "after" || st.EphemeralOwner != serving {
			t.Fatalf("client %d: its ephemeral on B: %q owner 0x%x %v, want owned by the serving session 0x%x", i, d, st.EphemeralOwner, err, serving)
		}
		noExpiry(t, evs[i])
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total"); got != 0 {
		t.Fatalf("sessions_expired_total = %v", got)
	}
}
