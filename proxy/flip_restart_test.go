package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestSessionSurvivesProxyRestartAroundAFlip: a proxy with --state-dir is
// stopped while its client is away and restarted around a flip it took
// no part in, in the three timings a killed proxy meets (SPEC.md 4.10,
// "the restart case"):
//
//  1. A→B while it is down: it comes back on the recorded primary B;
//  2. B→A: it comes back on B (the flip not recorded yet) and is flipped
//     to A before its client is back (0 sessions moved);
//  3. A→B: it comes back on A and learns of the flip from A's fence
//     (missedFlip), before its client is back.
//
// Each time the client reconnects within its timeout and keeps its
// session (never expired), its ephemeral on both ensembles (owned on the
// primary by the session that serves it, on the secondary by its shadow
// session) and its data watch; a raw client's zxids never go backwards
// and its reconnects are never refused. Without the per-ensemble records
// (session_resume.go) the new primary is shown the session that lives on
// the other ensemble and answers "expired".
func TestSessionSurvivesProxyRestartAroundAFlip(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	ca := directConn(t)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*zk.Conn{ca, cb} {
		if _, err := c.Create(root+"/w", []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	dir, fencePath := t.TempDir(), testFence(t)
	cfgOn := func(primary ensemble.Name, epoch int64) proxy.Config {
		up, sec := ens.Addrs(), b.Addrs()
		if primary == ensemble.Target {
			up, sec = sec, up
		}
		return proxy.Config{FencePath: fencePath, Upstream: up, Secondary: sec, PrimaryName: primary, Epoch: epoch,
			StateDir: dir, FenceLease: time.Second, Logger: testLogger(t)}
	}
	p, err := proxytest.Start(cfgOn(ensemble.Source, 0))
	if err != nil {
		t.Fatal(err)
	}
	addr := p.Addr
	t.Cleanup(func() { p.Close() })

	// The client cannot reach the proxy while blocked: it stays away
	// until the restarted proxy has done what the phase wants.
	var blocked atomic.Bool
	dialer := func(network, address string, timeout time.Duration) (net.Conn, error) {
		if blocked.Load() {
			return nil, errors.New("injected: the client is away")
		}
		return net.DialTimeout(network, address, timeout)
	}
	c, ev, err := zk.Connect([]string{addr}, 8*time.Second, zk.WithDialer(dialer), zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	expired := make(chan struct{})
	go func() {
		for e := range ev {
			if e.State == zk.StateExpired {
				close(expired)
				return
			}
		}
	}()
	waitSession := func(what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for c.State() != zk.StateHasSession {
			select {
			case <-expired:
				t.Fatalf("%s: the client's session expired", what)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: client not back (state %v)", what, c.State())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitSession("start")
	k := c.SessionID()
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// A node the client reads at version 0 on A while B's copy is at 3.
	if _, err := c.Create(root+"/v", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	rc, _ := rawOpen(t, addr, 0, nil, 0)
	rc.get(root)
	waitMirrored(t, p)
	for i := 0; i < 3; i++ {
		if _, err := cb.Set(root+"/v", []byte("x"), -1); err != nil {
			t.Fatal(err)
		}
	}
	if _, vst, err := c.Get(root + "/v"); err != nil || vst.Version != 0 {
		t.Fatalf("read before the flip: version %d, %v", vst.Version, err)
	}
	shB, ok := p.ShadowSession(k)
	if !ok {
		t.Fatal("no shadow session on B")
	}
	owners := func(what string, onA, onB int64) {
		t.Helper()
		for _, x := range []struct {
			name  string
			c     *zk.Conn
			owner int64
		}{{"A", ca, onA}, {"B", cb, onB}} {
			_, st, err := x.c.Get(root + "/eph")
			if err != nil || st.EphemeralOwner != x.owner {
				t.Fatalf("%s: the client's ephemeral on %s: owner 0x%x, %v; want 0x%x", what, x.name, st.EphemeralOwner, err, x.owner)
			}
		}
	}
	owners("before", k, shB)

	// phase runs one stop-flip-restart round: restart starts the new proxy
	// and does what comes before the client is back; then the client
	// reconnects and is checked against the primary it should be on.
	phase := func(what string, restart func() *proxytest.Proxy, primary *zk.Conn, onA, onB int64) {
		t.Helper()
		_, _, watch, err := c.GetW(root + "/w")
		if err != nil {
			t.Fatal(err)
		}
		blocked.Store(true)
		p.Close()
		p = restart()
		blocked.Store(false)
		waitSession(what)
		if c.SessionID() != k {
			t.Fatalf("%s: session 0x%x, want 0x%x", what, c.SessionID(), k)
		}
		if _, err := c.Create(root+"/after-"+what, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("%s: write after the restart: %v", what, err)
		}
		owners(what, onA, onB)
		if _, err := primary.Set(root+"/w", []byte(what), -1); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-watch:
			if e.Type != zk.EventNodeDataChanged {
				t.Fatalf("%s: the data watch ended with %v, want a change", what, e.Type)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the data watch did not fire", what)
		}
		rc.conn.Close()
		rc2, resp := rawOpen(t, addr, rc.id, rc.passwd, rc.zxid)
		if resp.TimeOut <= 0 || rc2.id != rc.id {
			t.Fatalf("%s: raw client's re-open: session 0x%x timeout %d, want 0x%x alive", what, rc2.id, resp.TimeOut, rc.id)
		}
		rc2.get(root) // its zxid is not below the last one seen
		rc = rc2
	}

	// 1. A→B while the proxy is down; it comes back on B.
	phase("restarted-on-B", func() *proxytest.Proxy {
		return startAt(t, addr, cfgOn(ensemble.Target, 1))
	}, cb, k, shB)
	// The version read on A keeps its meaning on B: the translation
	// recorded for A is carried over at the start on B (rebaseAtStart).
	if vst, err := c.Set(root+"/v", []byte("y"), 0); err != nil || vst.Version != 1 {
		t.Fatalf("conditional write with the version read on A, after the restart on B: version %d, %v", vst.Version, err)
	}

	// 2. B→A: the proxy comes back on B and is flipped without sessions.
	phase("flipped-to-A-after-restart", func() *proxytest.Proxy {
		np := startAt(t, addr, cfgOn(ensemble.Target, 1))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := np.Flip(ctx, 2, ensemble.Source); err != nil {
			t.Fatal(err)
		}
		return np
	}, ca, k, shB)

	// 3. A→B again: the proxy comes back on A at epoch 2, and the fences
	// record epoch 3 with primary B: it catches up by itself.
	phase("caught-up-with-B-by-its-fence", func() *proxytest.Proxy {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, addrs := range [][]string{ens.Addrs(), b.Addrs()} {
			fc, err := zkclient.Dial(ctx, addrs, zkclient.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fence.Raise(ctx, fc, fencePath, 3, ensemble.Target); err != nil {
				t.Fatal(err)
			}
			_ = fc.Close()
		}
		np := startAt(t, addr, cfgOn(ensemble.Source, 2))
		for {
			if e, pr := np.Epoch(); e == 3 && pr == ensemble.Target {
				return np
			}
			if ctx.Err() != nil {
				t.Fatal("the restarted proxy did not catch up with the flip its fence records")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}, cb, k, shB)

	time.Sleep(9 * time.Second) // past the session timeout: a session left behind would have expired
	owners("after the session timeout", k, shB)
	if c.State() != zk.StateHasSession {
		t.Fatalf("client state %v", c.State())
	}
}

// startAt starts a proxy on addr, where its clients expect it.
func startAt(t *testing.T, addr string, cfg proxy.Config) *proxytest.Proxy {
	t.Helper()
	np, err := proxytest.StartOn(addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return np
}

// rawOpen is rawConnect with a 10 s session timeout (the test's phases
// keep it away from the proxy for a while).
func rawOpen(t *testing.T, addr string, id int64, passwd []byte, lastZxid int64) (*rawClient, *jute.ConnectResponse) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	req := jute.ConnectRequest{LastZxidSeen: lastZxid, TimeOut: 10000, SessionID: id, Passwd: passwd}
	if passwd == nil {
		req.Passwd = make([]byte, 16)
	}
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&req))); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, fr: jute.NewFrameReader(bufio.NewReader(conn), 1<<20), zxid: lastZxid, events: map[string]int{}}
	frame, err := rc.fr.Next()
	if err != nil {
		t.Fatalf("re-open of session 0x%x with lastZxidSeen 0x%x refused: %v", id, lastZxid, err)
	}
	var resp jute.ConnectResponse
	if err := jute.Unmarshal(frame, &resp); err != nil {
		t.Fatal(err)
	}
	rc.id, rc.passwd = resp.SessionID, append([]byte(nil), resp.Passwd...)
	return rc, &resp
}
