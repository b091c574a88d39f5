package proxy_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// expiryMargin is how late after the session timeout the proxy promises to
// have closed a silent client's session (README, SPEC 4.3): one supervisor
// tick (a tenth of the timeout) plus a second for the closeSession to commit
// and the observer's watch to arrive.
func expiryMargin(timeout time.Duration) time.Duration { return timeout/10 + time.Second }

// TestStoppedClientSessionExpires stops (SIGSTOP) a kazoo process holding
// an ephemeral node through the proxy with a 4 s session: the proxy answers
// no more pings for it, and must close its session upstream as ZooKeeper
// would, so another client sees the node go within the timeout plus the
// margin. Before the fix the proxy kept the session alive forever.
func TestStoppedClientSessionExpires(t *testing.T) {
	t.Parallel() // after the tests that kill servers; these measure no heap
	requireFile(t, "/usr/lib/python3/dist-packages/kazoo/client.py", "python3-kazoo")
	root := testRoot(t)
	p := startProxy(t)
	const timeout = 4 * time.Second
	node := root + "/hung"
	ic := startInteractive(t, python, "testdata/kazoo_ephemeral.py", p.Addr, node, "4")
	ready := strings.Fields(ic.waitLine(t, "READY", 60*time.Second))
	sid := parseSession(t, ready[1])

	direct := directConn(t)
	ok, st, w, err := direct.ExistsW(node)
	if err != nil || !ok || st.EphemeralOwner != sid {
		t.Fatalf("ephemeral %s: exists %v, owner %x, want %x (%v)", node, ok, st.EphemeralOwner, sid, err)
	}
	// A healthy idle client is not expired: kazoo pings every third of the
	// timeout, which the proxy hears.
	time.Sleep(timeout + timeout/2)
	if ok, _, err := direct.Exists(node); err != nil || !ok {
		t.Fatalf("an idle, live client lost its ephemeral (exists %v, %v)", ok, err)
	}

	stopped := time.Now()
	if err := syscall.Kill(ic.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(ic.cmd.Process.Pid, syscall.SIGCONT) })
	select {
	case e := <-w:
		if e.Type != zk.EventNodeDeleted {
			t.Fatalf("watch on the hung client's ephemeral: %+v", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the hung client's ephemeral still exists 30 s after SIGSTOP (session timeout %v)", timeout)
	}
	gone := time.Since(stopped)
	t.Logf("ephemeral gone %v after SIGSTOP (timeout %v, margin %v)", gone.Round(time.Millisecond), timeout, expiryMargin(timeout))
	if gone > timeout+expiryMargin(timeout) {
		t.Fatalf("ephemeral gone %v after SIGSTOP, beyond the timeout %v plus the margin %v", gone, timeout, expiryMargin(timeout))
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total"); got != 1 {
		t.Fatalf("sessions_expired_total = %v, want 1", got)
	}
}

// TestDisconnectedClientKeepsSessionWithinItsTimeout cuts a client's TCP
// connection to the proxy (the client is running, not stopped) and lets it
// back 1.5 s later, within its 6 s timeout: it must find its session and
// ephemeral. Cut again and kept away, its session must be closed within
// the timeout plus the margin, and the client told it expired on return.
func TestDisconnectedClientKeepsSessionWithinItsTimeout(t *testing.T) {
	t.Parallel() // after the tests that kill servers; these measure no heap
	root := testRoot(t)
	p := startProxy(t)
	cut := startCutter(t, p.Addr)
	const timeout = 6 * time.Second
	c, events := connect(t, []string{cut.addr()}, timeout)
	sid := c.SessionID()
	eph, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}

	cut.cut(true)
	time.Sleep(1500 * time.Millisecond)
	cut.restore()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, st, err := c.Get(eph)
		if err == nil {
			if st.EphemeralOwner != sid || c.SessionID() != sid {
				t.Fatalf("after reconnecting: owner %x, client session %x, want %x", st.EphemeralOwner, c.SessionID(), sid)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no service after the client came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for len(events) > 0 {
		if e := <-events; e.State == zk.StateExpired {
			t.Fatal("session expired although the client came back within its timeout")
		}
	}

	direct := directConn(t)
	_, _, w, err := direct.ExistsW(eph)
	if err != nil {
		t.Fatal(err)
	}
	away := time.Now()
	cut.cut(true)
	select {
	case e := <-w:
		if e.Type != zk.EventNodeDeleted {
			t.Fatalf("watch on the departed client's ephemeral: %+v", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a client gone for 30 s still holds its ephemeral")
	}
	gone := time.Since(away)
	t.Logf("ephemeral gone %v after the client's connection was cut (timeout %v)", gone.Round(time.Millisecond), timeout)
	if gone > timeout+expiryMargin(timeout) {
		t.Fatalf("ephemeral gone %v after the cut, beyond the timeout %v plus the margin %v", gone, timeout, expiryMargin(timeout))
	}
	cut.restore()
	expired := time.After(20 * time.Second)
	for {
		select {
		case e := <-events:
			if e.State == zk.StateExpired {
				return
			}
		case <-expired:
			t.Fatal("the returning client was not told its session expired")
		}
	}
}

// cutter is a TCP hop between a client and the proxy that can cut every
// connection and refuse new ones, as a network partition of the client
// would, while the client process keeps running.
type cutter struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	conns    []net.Conn
	refusing bool
	wg       sync.WaitGroup
}

func startCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(func() {
		ln.Close()
		c.cut(true)
		c.wg.Wait()
	})
	return c
}

func (c *cutter) addr() string { return c.ln.Addr().String() }

// retarget sends new connections to another address (the client "moves" to
// another proxy while its address list stays the same).
func (c *cutter) retarget(target string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.target = target
}

func (c *cutter) accept() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		refusing := c.refusing
		c.mu.Unlock()
		if refusing {
			in.Close()
			continue
		}
		c.mu.Lock()
		target := c.target
		c.mu.Unlock()
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		c.mu.Lock()
		c.conns = append(c.conns, in, out)
		c.mu.Unlock()
		c.wg.Add(2)
		go c.pipe(in, out)
		go c.pipe(out, in)
	}
}

func (c *cutter) pipe(dst, src net.Conn) {
	defer c.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// cut closes every connection through the hop; refuse keeps new ones out
// until restore.
func (c *cutter) cut(refuse bool) {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.refusing = refuse
	c.mu.Unlock()
	for _, cn := range conns {
		cn.Close()
	}
}

func (c *cutter) restore() {
	c.mu.Lock()
	c.refusing = false
	c.mu.Unlock()
}

// TestSilentHandshakesExpire opens 50 sessions on raw connections that then
// send nothing at all, not even pings: each must be closed upstream by the
// proxy (counted), and a reconnect with its id and password is told it
// expired. Before, the proxy kept such sessions alive for as
// long as the connections stayed open.
func TestSilentHandshakesExpire(t *testing.T) {
	t.Parallel() // after the tests that kill servers; these measure no heap
	p := startProxy(t)
	const n, timeout = 50, 2 * time.Second
	type creds struct {
		id     int64
		passwd []byte
	}
	var sessions []creds
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fr := jute.NewFrameReader(bufioReader(conn), 1<<20)
		cr := jute.ConnectRequest{TimeOut: int32(timeout / time.Millisecond), Passwd: make([]byte, 16)}
		if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&cr))); err != nil {
			t.Fatal(err)
		}
		frame, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		var resp jute.ConnectResponse
		if err := jute.Unmarshal(frame, &resp); err != nil || resp.TimeOut != int32(timeout/time.Millisecond) {
			t.Fatalf("connect response %+v, %v (want the %v timeout)", resp, err, timeout)
		}
		sessions = append(sessions, creds{resp.SessionID, append([]byte(nil), resp.Passwd...)})
	}
	start := time.Now() // the last handshake: every session has been silent since
	for metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total") < n {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%v of %d silent sessions expired after 30 s", metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total"), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// No deadline on how soon: each close waits for an owner check, both
	// writes committed through the leader's log, 100 at once on an ensemble
	// shared with the other tests; under load (15 on 2 cores) their commits
	// alone took over a second. The margin is asserted for one client
	// (TestStoppedClientSessionExpires); what this test holds is that every
	// silent session is closed by the proxy and counted, never left.
	t.Logf("%d silent sessions closed upstream within %v of the last handshake (timeout %v, margin %v)",
		n, time.Since(start).Round(time.Millisecond), timeout, expiryMargin(timeout))
	for _, s := range sessions[:3] {
		conn, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		fr := jute.NewFrameReader(bufioReader(conn), 1<<20)
		cr := jute.ConnectRequest{TimeOut: int32(timeout / time.Millisecond), SessionID: s.id, Passwd: s.passwd}
		_, _ = conn.Write(jute.AppendFrame(nil, jute.Marshal(&cr)))
		frame, err := fr.Next()
		conn.Close()
		if err != nil {
			t.Fatalf("reconnect 0x%x: %v", s.id, err)
		}
		var resp jute.ConnectResponse
		if err := jute.Unmarshal(frame, &resp); err != nil || !resp.Expired() {
			t.Fatalf("reconnect 0x%x after its expiry: %+v, %v; want the expired answer", s.id, resp, err)
		}
	}
}

// TestSilentClientExpiresThroughASlowEnsemble cuts off a client holding an
// ephemeral through a proxy whose server is slow to commit writes: every
// multi on the connection is answered 3 s late (a hop holds the server's
// bytes), as a loaded ensemble whose log fsyncs crawl answers one, while
// reads and pings before it are answered at once. The relay's owner check
// before closing the silent session is such a multi: answered late, but
// answered. The proxy must close the session itself and count it, not take
// the slow answer for a lost server and leave the session to the
// ensemble's own expiry a whole timeout later, uncounted. Before the fix
// the check gave up after max(timeout/3, 1 s) (2 s here) and
// sessions_expired_total stayed 0; 5 of 50 silent sessions were missed that
// way at load 15 (TestSilentHandshakesExpire).
func TestSilentClientExpiresThroughASlowEnsemble(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	const timeout, slow = 6 * time.Second, 3 * time.Second
	hop := startSlowMultiHop(t, ens.Addrs()[0], slow)
	p, err := proxytest.Start(proxy.Config{Upstream: []string{hop.Addr().String()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	cut := startCutter(t, p.Addr)
	c, _ := connect(t, []string{cut.addr()}, timeout)
	eph, err := c.Create(root+"/slow", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	direct := directConn(t)
	_, _, w, err := direct.ExistsW(eph)
	if err != nil {
		t.Fatal(err)
	}
	away := time.Now()
	cut.cut(true)
	select {
	case e := <-w:
		if e.Type != zk.EventNodeDeleted {
			t.Fatalf("watch on the departed client's ephemeral: %+v", e)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a client gone for 60 s still holds its ephemeral")
	}
	t.Logf("ephemeral gone %v after the cut (timeout %v, multis answered %v late)", time.Since(away).Round(time.Millisecond), timeout, slow)
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total"); got != 1 {
		t.Fatalf("sessions_expired_total = %v, want 1: the proxy left the silent session to the ensemble instead of closing it", got)
	}
}

// startSlowMultiHop relays TCP connections to target; once a connection
// has carried a multi request, the server's bytes that follow are held
// until slow after it (a write committed slowly: the replies behind it on
// that connection wait too, as ZooKeeper answers a session in order).
func startSlowMultiHop(t *testing.T, target string, slow time.Duration) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			var holdUntil atomic.Int64 // unix nanos
			wg.Add(2)
			go func() { // client to server: frames, watching for multis
				defer wg.Done()
				defer out.Close()
				r := bufio.NewReader(in)
				var hdr [4]byte
				for first := true; ; first = false {
					if _, err := io.ReadFull(r, hdr[:]); err != nil {
						return
					}
					body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
					if _, err := io.ReadFull(r, body); err != nil {
						return
					}
					if !first && len(body) >= 8 && int32(binary.BigEndian.Uint32(body[4:8])) == int32(jute.OpMulti) {
						holdUntil.Store(time.Now().Add(slow).UnixNano())
					}
					if _, err := out.Write(append(hdr[:], body...)); err != nil {
						return
					}
				}
			}()
			go func() { // server to client: bytes, held after a multi
				defer wg.Done()
				defer in.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := out.Read(buf)
					if n > 0 {
						time.Sleep(time.Until(time.Unix(0, holdUntil.Load())))
						if _, werr := in.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}

// TestSessionMovedToAnotherProxyIsNotExpiredByTheFirst cuts a client off
// its proxy and lets it reconnect, with the same session, through a second
// proxy (a connect string listing two proxies, or a fall-back to ZooKeeper
// directly). The first proxy's relay, left without its client, must not
// take the session back when the ensemble hands it to the new connection,
// nor close it when the client's timeout has passed there: the client is
// alive elsewhere. Before the fix the first proxy closed the session about
// one timeout later and the healthy client lost its ephemeral.
func TestSessionMovedToAnotherProxyIsNotExpiredByTheFirst(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	first, second := startProxy(t), startProxy(t)
	cut := startCutter(t, first.Addr)
	const timeout = 4 * time.Second
	c, events := connect(t, []string{cut.addr()}, timeout)
	sid := c.SessionID()
	eph, err := c.Create(root+"/moved", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	cut.cut(true)
	cut.retarget(second.Addr)
	cut.restore()
	// Three timeouts: the first proxy's relay has long given up or closed
	// the session by then.
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		_, st, err := c.Get(eph)
		if err != nil && !errors.Is(err, zk.ErrConnectionClosed) && !errors.Is(err, zk.ErrNoServer) {
			t.Fatalf("the moved client's ephemeral: %v", err)
		}
		if err == nil && st.EphemeralOwner != sid {
			t.Fatalf("ephemeral owned by %x, want the client's session %x", st.EphemeralOwner, sid)
		}
	}
	for len(events) > 0 {
		if e := <-events; e.State == zk.StateExpired {
			t.Fatal("the session expired although its client reconnected through another proxy within its timeout")
		}
	}
	if c.SessionID() != sid {
		t.Fatalf("client session %x, want %x", c.SessionID(), sid)
	}
	if _, _, err := c.Get(eph); err != nil {
		t.Fatalf("the moved client's ephemeral after %v: %v", 3*timeout, err)
	}
}
