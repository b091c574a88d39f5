package proxy_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestBacklogFileHoldsEveryAcknowledgedWrite: with --state-dir, a write the
// proxy acknowledges and has not mirrored (the secondary is down) is in
// the backlog file the moment the client has its reply, so a proxy
// SIGKILLed at any instant has recorded it (the file is what survives the
// process). Before, the file was rewritten every 250 ms: a SIGKILL lost the
// writes acknowledged since the last rewrite, and the flip scenario under
// faults lost /reg/acks/w2-00240 that way (acknowledged through the killed
// proxy, never on the new primary).
func TestBacklogFileHoldsEveryAcknowledgedWrite(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ensB.Restart(context.Background(), 1) })
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("%s/w%02d", root, i)
		if _, err := c.Create(n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "mirror-backlog"))
		if err != nil || !strings.Contains(string(b), n+"\n") {
			t.Fatalf("write %d acknowledged, not mirrored (B down), and not in the backlog file: a SIGKILL now loses it (%v):\n%s", i, err, b)
		}
		time.Sleep(7 * time.Millisecond)
	}
}

// TestBacklogFileForgetsMirroredWrites: once a write's mirror is verified,
// the backlog file no longer lists it as waiting, at once (not at the next
// rewrite), so a proxy SIGKILLed then and restarted after a flip it missed
// does not repair, or report as a conflict, a write that had reached the
// new primary (the flip scenario's hot registers were reported CONFLICT
// that way).
func TestBacklogFileForgetsMirroredWrites(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("%s/w%02d", root, i)
		if _, err := c.Create(n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		waitMirrored(t, p)
		b, err := os.ReadFile(filepath.Join(dir, "mirror-backlog"))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		waiting := false // the last line naming n lists it, or a "-" line drops it
		for _, l := range strings.Split(string(b), "\n") {
			switch l {
			case n:
				waiting = true
			case "-" + n:
				waiting = false
			}
		}
		if waiting {
			t.Fatalf("write %d is mirrored (backlog 0) but the backlog file still lists it as waiting:\n%s", i, b)
		}
	}
}

// TestBacklogFileHoldsAWriteInFlight: a write the primary commits while
// its reply has not reached the proxy (held back here) is already in the
// backlog file: a proxy SIGKILLed at that instant (its client sees
// ConnectionLoss, an unknown outcome) mirrors it after its restart.
// Before, the path was recorded only when the reply arrived, and the
// flip scenario under faults ended with /reg/acks/w2-00231 on B alone
// (committed through the killed proxy, never mirrored).
func TestBacklogFileHoldsAWriteInFlight(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var hold atomic.Bool
	var heldSession atomic.Int64 // only this session's connection is held
	isA := map[string]bool{}
	for _, a := range ens.Addrs() {
		isA[a] = true
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || !isA[addr] {
			return c, err
		}
		return &replyHeldConn{Conn: c, hold: &hold, only: &heldSession}, nil
	}
	dir := t.TempDir()
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t), Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	if _, err := c.Create(root+"/warm", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	n := root + "/in-flight"
	heldSession.Store(c.SessionID())
	hold.Store(true) // replies from A to c's session wait in the proxy's socket
	t.Cleanup(func() { hold.Store(false) })
	go func() { _, _ = c.Create(n, []byte("x"), 0, zk.WorldACL(zk.PermAll)) }()
	a := directConn(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ok, _, _ := a.Exists(n); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the create never reached A")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := os.ReadFile(filepath.Join(dir, "mirror-backlog"))
	if err != nil || !strings.Contains(string(got), n+"\n") {
		t.Fatalf("A committed %s, its reply not yet read by the proxy, and the backlog file does not name it: a SIGKILL now leaves it off B for good (%v):\n%s", n, err, got)
	}
	// The lag watcher rewrites the file (compacts it to what still
	// waits) after another session's write is mirrored; the rewrite must
	// keep the write whose reply is still held. Before, it kept only
	// queued paths, and a path is queued when its reply arrives.
	c2, _ := connect(t, []string{p.Addr}, 10*time.Second)
	other := root + "/other"
	if _, err := c2.Create(other, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		got, err = os.ReadFile(filepath.Join(dir, "mirror-backlog"))
		lines := strings.Split(string(got), "\n")
		if onB, _, _ := cb.Exists(other); err == nil && onB && !slices.Contains(lines, other) && !slices.Contains(lines, "-"+other) {
			break // mirrored, and the file rewritten since
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backlog file was not rewritten after %s was mirrored (%v):\n%s", other, err, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !slices.Contains(strings.Split(string(got), "\n"), n) {
		onB, _, _ := cb.Exists(n)
		t.Fatalf("a rewrite of the backlog file dropped %s, committed on A with its reply still held (on B: %v): a SIGKILL now leaves it off B for good:\n%s", n, onB, got)
	}
	hold.Store(false)
	waitMirrored(t, p)
}

// replyHeldConn is a connection whose reads return nothing while hold
// is set (and, with only, if its session is *only: the session id is read
// from the handshake's reply, the connection's first frame).
type replyHeldConn struct {
	net.Conn
	hold    *atomic.Bool
	only    *atomic.Int64
	session atomic.Int64
}

func (c *replyHeldConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.only != nil && c.session.Load() == 0 && n >= 20 {
		// length, protocolVersion, timeOut, sessionId (ConnectResponse)
		c.session.Store(int64(binary.BigEndian.Uint64(b[12:20])))
	}
	for c.hold.Load() && (c.only == nil || c.only.Load() == c.session.Load()) { // a reader already waiting in Read is held too
		time.Sleep(2 * time.Millisecond)
	}
	return n, err
}

// TestWriteInFlightOnALostServerIsMirrored: the primary's server commits a
// create and the connection dies before its reply reaches the proxy. The
// client gets ConnectionLoss (an unknown outcome) and the write is on A:
// the proxy mirrors its path all the same, so B has it too. Before, only
// a reply queued a path, and the flip scenario under faults ended with
// /reg/acks/w4-00081 on A alone (in flight when a server of A was
// SIGKILLed, then B made primary).
func TestWriteInFlightOnALostServerIsMirrored(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var hold, cut atomic.Bool
	isA := map[string]bool{}
	for _, a := range ens.Addrs() {
		isA[a] = true
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || !isA[addr] {
			return c, err
		}
		return &cutConn{Conn: c, hold: &hold, cut: &cut}, nil
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Logger: testLogger(t), Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	if _, err := c.Create(root+"/warm", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	n := root + "/in-flight"
	hold.Store(true)
	done := make(chan error, 1)
	go func() { _, err := c.Create(n, []byte("x"), 0, zk.WorldACL(zk.PermAll)); done <- err }()
	a := directConn(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ok, _, _ := a.Exists(n); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the create never reached A")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cut.Store(true) // the connections to A die with the reply unread
	hold.Store(false)
	if err := <-done; err == nil {
		t.Log("the client got its reply after all")
	}
	cut.Store(false)
	deadline = time.Now().Add(20 * time.Second)
	for {
		if ok, _, _ := cb.Exists(n); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, committed on A with its reply lost, never reached B", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cutConn is a connection whose reads return nothing while hold is set,
// and fail once cut is set (the server died with its replies unread).
type cutConn struct {
	net.Conn
	hold, cut *atomic.Bool
}

func (c *cutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	for c.hold.Load() && !c.cut.Load() {
		time.Sleep(2 * time.Millisecond)
	}
	if c.cut.Load() {
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	return n, err
}
