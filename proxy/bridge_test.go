package proxy_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// bridge wraps the proxy's upstream connections so a test can hold back the
// server's replies (a request is then provably in flight) and sever the
// connection, like etcd's integration bridge.
type bridge struct {
	mu    sync.Mutex
	conns []*heldConn
}

type heldConn struct {
	net.Conn
	mu      sync.Mutex
	cond    *sync.Cond
	held    bool
	severed bool
}

// Read delivers what the server sent unless replies are held; a reply that
// arrives while held is kept back, and lost if the connection is severed.
func (c *heldConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.held && !c.severed {
		c.cond.Wait()
	}
	if c.severed {
		return 0, net.ErrClosed
	}
	return n, err
}

func (b *bridge) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	hc := &heldConn{Conn: c}
	hc.cond = sync.NewCond(&hc.mu)
	b.mu.Lock()
	b.conns = append(b.conns, hc)
	b.mu.Unlock()
	return hc, nil
}

// holdAll stops delivering replies on every current upstream connection.
func (b *bridge) holdAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.mu.Lock()
		c.held = true
		c.mu.Unlock()
	}
}

// severAll closes every current upstream connection (releasing held reads).
func (b *bridge) severAll() {
	b.mu.Lock()
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	for _, c := range conns {
		c.Conn.Close()
		c.mu.Lock()
		c.severed = true
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

func startBridgedProxy(t *testing.T) (*proxytest.Proxy, *bridge) {
	t.Helper()
	b := &bridge{}
	p, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs(), Dial: b.dial, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, b
}

// TestReadInFlightIsResentInvisibly loses the upstream connection while a
// getData is in flight: the proxy must re-send it on the new server and the
// client must get its answer with no disconnection at all.
func TestReadInFlightIsResentInvisibly(t *testing.T) {
	root := testRoot(t)
	p, b := startBridgedProxy(t)
	c, events := connect(t, []string{p.Addr}, 10*time.Second)
	if _, err := c.Create(root+"/r", []byte("payload"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	b.holdAll()
	type result struct {
		data []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		d, _, err := c.Get(root + "/r")
		got <- result{d, err}
	}()
	time.Sleep(200 * time.Millisecond) // the request reaches the server; its reply is held
	b.severAll()
	select {
	case r := <-got:
		if r.err != nil || string(r.data) != "payload" {
			t.Fatalf("read in flight during the move: %q, %v", r.data, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("read in flight never answered")
	}
	for len(events) > 0 {
		if e := <-events; e.State == zk.StateDisconnected || e.State == zk.StateExpired {
			t.Fatalf("client saw %v for a read in flight", e.State)
		}
	}
	waitMetric(t, p, "ok", 1)
}

// TestWriteInFlightMakesClientReconnectWithSameSession loses the upstream
// connection while a setData is in flight. Its outcome is unknown, so the
// client must get a connection loss for it (its own), then reconnect
// through the proxy to the same session: ephemerals kept, nothing expired.
func TestWriteInFlightMakesClientReconnectWithSameSession(t *testing.T) {
	root := testRoot(t)
	p, b := startBridgedProxy(t)
	c, events := connect(t, []string{p.Addr}, 10*time.Second)
	sid := c.SessionID()
	eph, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	b.holdAll()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Set(root, []byte("maybe"), -1)
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	b.severAll()
	select {
	case err := <-errc:
		if !errors.Is(err, zk.ErrConnectionClosed) {
			t.Fatalf("write in flight during the move: got %v, want the client's connection-closed error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("write in flight never answered")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, st, err := c.Get(eph)
		if err == nil {
			if st.EphemeralOwner != sid || c.SessionID() != sid {
				t.Fatalf("session changed: owner %x, client %x, want %x", st.EphemeralOwner, c.SessionID(), sid)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no service after reconnect: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for len(events) > 0 {
		if e := <-events; e.State == zk.StateExpired {
			t.Fatal("session expired")
		}
	}
	waitMetric(t, p, "client_reconnect", 1)
}

// TestSessionSurvivesProxyRestart stops the proxy and starts a new one on
// the same address: the client reconnects into its session.
func TestSessionSurvivesProxyRestart(t *testing.T) {
	root := testRoot(t)
	p1, err := proxytest.Start(proxy.Config{Upstream: ens.Addrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	addr := p1.Addr
	c, events := connect(t, []string{addr}, 10*time.Second)
	sid := c.SessionID()
	eph, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	_, _, w, err := c.GetW(root)
	if err != nil {
		t.Fatal(err)
	}
	p1.Close()
	time.Sleep(500 * time.Millisecond)
	p2, err := proxytest.StartOn(addr, proxy.Config{Upstream: ens.Addrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	direct := directConn(t)
	if _, err := direct.Set(root, []byte("after restart"), -1); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, w, 15*time.Second); e.Type != zk.EventNodeDataChanged {
		t.Fatalf("watch across proxy restart: %+v", e)
	}
	_, st, err := c.Get(eph)
	if err != nil || st.EphemeralOwner != sid || c.SessionID() != sid {
		t.Fatalf("after proxy restart: owner %x session %x want %x (%v)", st.EphemeralOwner, c.SessionID(), sid, err)
	}
	for len(events) > 0 {
		if e := <-events; e.State == zk.StateExpired {
			t.Fatal("session expired across a proxy restart")
		}
	}
}

func waitMetric(t *testing.T, p *proxytest.Proxy, result string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := metricValue(t, p.Registry, "zkmigrate_proxy_upstream_reconnects_total", "result", result)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream_reconnects_total{result=%q} = %v, want %v", result, v, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPersistentWatchCatchUpAfterMove: ZooKeeper re-registers persistent
// watches without reporting changes made before the re-registration. A
// change is made while the session's server connection is held (its event
// is lost with the connection); after the move, the proxy must still
// deliver it.
func TestPersistentWatchCatchUpAfterMove(t *testing.T) {
	root := testRoot(t)
	p, b := startBridgedProxy(t)
	ctx := context.Background()
	c, err := zkclient.Dial(ctx, []string{p.Addr}, zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.AddWatch(ctx, root, true); err != nil {
		t.Fatal(err)
	}
	direct := directConn(t)
	b.holdAll()
	if _, err := direct.Create(root+"/made-while-moving", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Set(root, []byte("changed-while-moving"), -1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the events reach the held connection
	b.severAll()
	want := map[string]int32{root + "/made-while-moving": jute.EventNodeCreated, root: jute.EventNodeDataChanged}
	deadline := time.After(15 * time.Second)
	for len(want) > 0 {
		select {
		case ev := <-c.Events():
			if typ, ok := want[ev.Path]; ok && typ == ev.Type {
				delete(want, ev.Path)
			}
		case <-deadline:
			t.Fatalf("events never delivered after the move: %v", want)
		}
	}
	// Changes after the move come from the server, once.
	if _, err := direct.Set(root+"/made-while-moving", []byte("after"), -1); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-c.Events():
		if ev.Path != root+"/made-while-moving" || ev.Type != jute.EventNodeDataChanged {
			t.Fatalf("event after the move: %+v", ev)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no event for a change after the move")
	}
}
