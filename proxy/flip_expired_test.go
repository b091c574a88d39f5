package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestFlipReopensAShadowSessionExpiredBeforeTheSwap: the new primary ends
// a client's shadow session between the drain and the swap (here closed
// from outside with its id and password while the barrier holds, after
// the control plane raised the fences). The client's session on the old
// primary is alive, so the client must not be told it expired: the swap
// opens a new session on B for it, creates its ephemerals there again
// (a plain one and a sequential one, by the names A gave them), re-arms
// its watch, says loudly which ephemeral it could not copy (one the
// client itself cannot read), keeps the versions it read before (translated as for any
// znode at a flip), and serves it from that session. Without it, either the
// client found its session expired (the swap resumed the dead shadow
// session), or the shadow's own goroutine opened a new session whose
// mirror of the ephemerals met B's raised fence: the client kept its
// session but its ephemerals were gone from the new primary.
func TestFlipReopensAShadowSessionExpiredBeforeTheSwap(t *testing.T) {
	// The expiry is found by the shadow's own goroutine first (it marks
	// itself lost while the flip holds), or by the swap (whichever comes
	// first: the shadow's re-attach or the swap's resume).
	for _, waitLost := range []bool{true, false} {
		t.Run(map[bool]string{true: "found by the shadow", false: "found by either"}[waitLost], func(t *testing.T) {
			testShadowExpiredBeforeTheSwap(t, waitLost)
		})
	}
}

func testShadowExpiredBeforeTheSwap(t *testing.T, waitLost bool) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// blockB refuses the proxy's dials to B while the test ends the
	// shadow session there, so the shadow cannot take it back meanwhile.
	var blockB atomic.Bool
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if blockB.Load() && slices.Contains(b.Addrs(), addr) {
			return nil, errors.New("injected: connection refused")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	fencePath := "/fence" + strings.ReplaceAll(root, "/", "_") // one per run: this test raises it
	p, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: ens.Addrs(), Secondary: b.Addrs(), Dial: dial, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	c, ev := connect(t, []string{p.Addr}, 9*time.Second)
	if _, err = c.Create(root+"/eph", []byte("e"), zk.FlagEphemeral, acl); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // version 2 on A
		if _, err := c.Set(root+"/eph", []byte("e"), -1); err != nil {
			t.Fatal(err)
		}
	}
	seq, err := c.Create(root+"/seq-", []byte("s"), zk.FlagEphemeral|zk.FlagSequence, acl)
	if err != nil {
		t.Fatal(err)
	}
	// An ephemeral only another identity may read: the mirror cannot
	// read it back (NOAUTH), so only getEphemerals on the client's
	// session finds it at the swap, and it cannot be copied: that must be
	// said, not skipped.
	if _, err := c.Create(root+"/locked", []byte("l"), zk.FlagEphemeral, zk.DigestACL(zk.PermAll, "other", "secret")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(root+"/w", []byte("0"), 0, acl); err != nil {
		t.Fatal(err)
	}
	_, _, wch, err := c.GetW(root + "/w")
	if err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	sid, spw, ok := p.ShadowCredentials(c.SessionID())
	if !ok {
		t.Fatal("no shadow session")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const epoch = 1
	if _, err := p.Hold(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	for _, z := range []*zk.Conn{ca, cb} {
		raiseFence(t, z, fencePath, epoch, ensemble.Target)
	}
	// B ends the shadow session (as it would expire it): its ephemerals go.
	blockB.Store(true)
	endSession(t, b.Addrs()[0], sid, spw, func() bool {
		for _, e := range []string{root + "/eph", seq} {
			if ok, _, err := cb.Exists(e); err != nil || ok {
				return false
			}
		}
		return true
	})
	blockB.Store(false)
	for waitLost && !p.ShadowLost(c.SessionID()) {
		if ctx.Err() != nil {
			t.Fatal("the shadow never found its session expired")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.Swap(ctx, epoch, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	p.Release(epoch)

	// The client keeps its session, served on B by a live session that
	// owns its ephemerals there.
	if _, err := c.Set(root+"/w", []byte("through"), -1); err != nil {
		t.Fatalf("write after the flip: %v", err)
	}
	serving, ok := p.ServingSession(c.SessionID())
	if !ok || serving == sid {
		t.Fatalf("serving session 0x%x (%v), the expired shadow was 0x%x", serving, ok, sid)
	}
	for e, want := range map[string]string{root + "/eph": "e", seq: "s"} {
		d, st, err := cb.Get(e)
		if err != nil {
			t.Fatalf("the client's ephemeral %s on the new primary: %v", e, err)
		}
		if string(d) != want || st.EphemeralOwner != serving {
			t.Fatalf("%s on B: %q owned by 0x%x, want %q owned by the serving session 0x%x", e, d, st.EphemeralOwner, want, serving)
		}
	}
	// A version read before the flip keeps its meaning (SPEC.md 4.10,
	// hard problem 5) though the znode was created again on B.
	if _, err := c.Set(root+"/eph", []byte("e"), 1); !errors.Is(err, zk.ErrBadVersion) {
		t.Fatalf("write with a version the client never saw: %v, want BADVERSION", err)
	}
	if st, err := c.Set(root+"/eph", []byte("e"), 2); err != nil || st.Version != 3 {
		t.Fatalf("write with the version read before the flip: version %d, %v; want 3", st.Version, err)
	}
	select {
	case e := <-wch:
		if e.Type != zk.EventNodeDataChanged {
			t.Fatalf("watch event %v", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the watch set before the flip did not fire for a change after it")
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_flip_session_faults_total", "what", "shadow_reopened"); got != 1 {
		t.Fatalf("flip_session_faults_total{shadow_reopened} = %v, want 1", got)
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_flip_session_faults_total", "what", "ephemeral_not_moved"); got != 1 {
		t.Fatalf("flip_session_faults_total{ephemeral_not_moved} = %v, want 1 (%s/locked)", got, root)
	}
	noExpiry(t, ev)
	// The ephemerals live and die with the client's session.
	c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for _, e := range []string{root + "/eph", seq} {
		for {
			ok, _, err := cb.Exists(e)
			if err == nil && !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still on B after the client closed its session", e)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// endSession ends session id on the server at addr from outside, as an
// expiry would: it resumes the session on a connection of its own and
// closes it, until ended reports the session's ephemerals gone.
func endSession(t *testing.T, addr string, id int64, passwd []byte, ended func() bool) {
	t.Helper()
	var last error
	for try := 0; try < 20; try++ {
		last = tryEndSession(addr, id, passwd)
		for wait := time.Now().Add(time.Second); time.Now().Before(wait); time.Sleep(10 * time.Millisecond) {
			if ended() {
				return
			}
		}
	}
	t.Fatalf("could not end session 0x%x on %s (last: %v)", id, addr, last)
}

func tryEndSession(addr string, id int64, passwd []byte) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&jute.ConnectRequest{TimeOut: 4000, SessionID: id, Passwd: passwd}))); err != nil {
		return err
	}
	fr := jute.NewFrameReader(bufio.NewReader(conn), 1<<20)
	frame, err := fr.Next()
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	var resp jute.ConnectResponse
	if err := jute.Unmarshal(frame, &resp); err != nil {
		return err
	}
	if resp.Expired() {
		return nil // already gone
	}
	var e jute.Encoder
	(&jute.RequestHeader{Xid: 1, Type: int32(jute.OpCloseSession)}).Encode(&e)
	if _, err := conn.Write(jute.AppendFrame(nil, e.Bytes())); err != nil {
		return err
	}
	if frame, err = fr.Next(); err != nil {
		// ZooKeeper closes every connection of a session it closes, this
		// one too, at times before the reply goes out: the caller checks
		// the session's ephemerals.
		return nil
	}
	var h jute.ReplyHeader
	if err := h.Decode(jute.NewDecoder(frame)); err != nil {
		return err
	}
	if h.Err != 0 {
		return fmt.Errorf("closeSession: code %d", h.Err)
	}
	return nil
}

// noExpiry fails the test if ev carried an expiry.
func noExpiry(t *testing.T, ev <-chan zk.Event) {
	t.Helper()
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateExpired {
				t.Fatal("the client's session expired")
			}
		default:
			return
		}
	}
}
