package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

const flipToken = "s3cret-flip-token"

// postFlip sends a barrier request as the control plane does and returns
// the status code.
func postFlip(t *testing.T, url, token string, epoch int64, primary ensemble.Name) int {
	t.Helper()
	body, _ := json.Marshal(membership.FlipRequest{Migration: "m", Epoch: epoch, Primary: primary})
	req, _ := http.NewRequest(http.MethodPost, url+membership.FlipPath, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func flipEndpoint(t *testing.T, p *proxytest.Proxy) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(membership.FlipPath, p.FlipHandler(flipToken, nil))
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

// rawClient is a minimal ZooKeeper client speaking jute over a socket, so
// the test sees every reply header's zxid and controls the lastZxidSeen of
// a reconnect.
type rawClient struct {
	t      *testing.T
	conn   net.Conn
	fr     *jute.FrameReader
	id     int64
	passwd []byte
	zxid   int64 // highest zxid seen in a reply header
	xid    int32
	events map[string]int // watch events received, by path
}

func rawConnect(t *testing.T, addr string, id int64, passwd []byte, lastZxid int64) (*rawClient, *jute.ConnectResponse) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	req := jute.ConnectRequest{LastZxidSeen: lastZxid, TimeOut: 4000, SessionID: id, Passwd: passwd}
	if passwd == nil {
		req.Passwd = make([]byte, 16)
	}
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&req))); err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, conn: conn, fr: jute.NewFrameReader(bufio.NewReader(conn), 1<<20), zxid: lastZxid, events: map[string]int{}}
	frame, err := rc.fr.Next()
	if err != nil {
		t.Fatalf("reconnect with session 0x%x and lastZxidSeen 0x%x refused: %v", id, lastZxid, err)
	}
	var resp jute.ConnectResponse
	if err := jute.Unmarshal(frame, &resp); err != nil {
		t.Fatal(err)
	}
	rc.id, rc.passwd = resp.SessionID, append([]byte(nil), resp.Passwd...)
	return rc, &resp
}

// get sends getData and returns the reply header's zxid, failing the test
// if it is below one seen before.
func (rc *rawClient) get(path string) { rc.getData(path, false) }

// getData is get, leaving a data watch if watch is set.
func (rc *rawClient) getData(path string, watch bool) {
	rc.t.Helper()
	rc.xid++
	var e jute.Encoder
	(&jute.RequestHeader{Xid: rc.xid, Type: int32(jute.OpGetData)}).Encode(&e)
	(&jute.GetDataRequest{Path: path, Watch: watch}).Encode(&e)
	if _, err := rc.conn.Write(jute.AppendFrame(nil, e.Bytes())); err != nil {
		rc.t.Fatal(err)
	}
	for {
		frame, err := rc.fr.Next()
		if err != nil {
			rc.t.Fatalf("getData %s: %v", path, err)
		}
		var h jute.ReplyHeader
		d := jute.NewDecoder(frame)
		if err := h.Decode(d); err != nil {
			rc.t.Fatal(err)
		}
		if h.Xid == jute.XidWatchEvent {
			var ev jute.WatcherEvent
			if err := ev.Decode(d); err != nil {
				rc.t.Fatal(err)
			}
			rc.events[ev.Path]++
			continue
		}
		if h.Xid != rc.xid {
			continue
		}
		if h.Err != 0 {
			rc.t.Fatalf("getData %s: error %d", path, h.Err)
		}
		if h.Zxid < rc.zxid {
			rc.t.Fatalf("zxid went backwards: reply 0x%x after 0x%x", h.Zxid, rc.zxid)
		}
		rc.zxid = h.Zxid
		return
	}
}

// TestFlipMovesSessionsAndEphemerals flips a two-ensemble proxy A→B and
// back through its admin endpoint under live go-zookeeper sessions: no
// error, no disconnect, the ephemeral owned on the new primary by the
// session that serves the client (it goes when the client closes), a
// watch re-armed on the new primary fires once, and every zxid the client
// sees keeps increasing, versions read before a flip keep their meaning
// after it (a reconnect after the flip with the last zxid
// seen is not refused, and keeps the client's session id).
func TestFlipMovesSessionsAndEphemerals(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	ca := directConn(t)
	url := flipEndpoint(t, p)

	c, ev := connect(t, []string{p.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/data", []byte("v0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(root+"/eph", []byte("me"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// A is ahead of B in transactions, so B's zxids are below what the
	// client has seen: without translation a reconnect is refused.
	for i := 0; i < 50; i++ {
		if _, err := ca.Set(root, []byte(fmt.Sprint(i)), -1); err != nil {
			t.Fatal(err)
		}
	}
	// A znode whose versions differ between the ensembles (A at 5, B's
	// copy at 0, same data): a conditional write with the version read
	// before the flip must behave after it as it would have on A.
	if _, err := ca.Create(root+"/ver", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := ca.Set(root+"/ver", []byte("same"), -1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cb.Create(root+"/ver", []byte("same"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	_, vst, err := c.Get(root + "/ver")
	if err != nil || vst.Version != 5 {
		t.Fatalf("version through the proxy before the flip: %d %v", vst.Version, err)
	}
	raw, _ := rawConnect(t, p.Addr, 0, nil, 0)
	raw.get(root)
	_, _, wch, err := c.GetW(root + "/data")
	if err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	shadowB, ok := p.ShadowSession(c.SessionID())
	if !ok {
		t.Fatal("no shadow session")
	}

	if code := postFlip(t, url, "", 1, ensemble.Target); code != http.StatusUnauthorized {
		t.Fatalf("flip without the token: %d, want 401", code)
	}
	if code := postFlip(t, url, "wrong", 1, ensemble.Target); code != http.StatusUnauthorized {
		t.Fatalf("flip with a wrong token: %d, want 401", code)
	}
	if code := postFlip(t, url, flipToken, 1, ensemble.Target); code != http.StatusOK {
		t.Fatalf("flip A→B: %d", code)
	}
	if code := postFlip(t, url, flipToken, 1, ensemble.Target); code != http.StatusOK {
		t.Fatalf("repeated flip for the epoch held: %d, want 200", code)
	}
	if e, pr := p.Epoch(); e != 1 || pr != ensemble.Target {
		t.Fatalf("proxy holds epoch %d primary %s", e, pr)
	}

	// Served by B now: a write through the proxy lands on B first, the
	// ephemeral on B is owned by the session serving the client.
	raw.get(root)
	if _, err := c.Create(root+"/afterflip", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the flip: %v", err)
	}
	if ok, _, err := cb.Exists(root + "/afterflip"); err != nil || !ok {
		t.Fatalf("write after the flip not on B: %v %v", ok, err)
	}
	_, st, err := cb.Get(root + "/eph")
	if err != nil || st.EphemeralOwner != shadowB {
		t.Fatalf("ephemeral on B after the flip: owner 0x%x %v, want the session now serving the client, 0x%x", st.EphemeralOwner, err, shadowB)
	}
	if sh, _ := p.ShadowSession(c.SessionID()); sh != c.SessionID() {
		t.Fatalf("shadow session after the flip: 0x%x, want the client's original session 0x%x (now mirroring to A)", sh, c.SessionID())
	}
	// The watch set on A was re-armed on B: a change made on B fires it,
	// once.
	if _, err := cb.Set(root+"/data", []byte("on B"), -1); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, wch, 10*time.Second); e.Type != zk.EventNodeDataChanged {
		t.Fatalf("watch after the flip: %+v", e)
	}
	raw.get(root)

	// Versions read before the flip: a stale one fails, the current one
	// succeeds, and the client sees A's numbering continue.
	if _, err := c.Set(root+"/ver", []byte("x"), 4); err != zk.ErrBadVersion {
		t.Fatalf("setData with a stale version after the flip: %v, want ErrBadVersion", err)
	}
	st6, err := c.Set(root+"/ver", []byte("after flip"), 5)
	if err != nil {
		t.Fatalf("setData with the version read before the flip: %v", err)
	}
	if st6.Version != 6 {
		t.Fatalf("version after the write: %d, want 6", st6.Version)
	}
	if _, err := c.Set(root+"/ver", []byte("x"), 5); err != zk.ErrBadVersion {
		t.Fatalf("setData with the version before the last write: %v, want ErrBadVersion", err)
	}

	// A reconnect after the flip with the last zxid seen (A's numbering is
	// ahead of B's) keeps the session.
	last := raw.zxid
	raw.conn.Close()
	raw2, resp := rawConnect(t, p.Addr, raw.id, raw.passwd, last)
	if resp.Expired() || resp.SessionID != raw.id {
		t.Fatalf("reconnect after the flip: session 0x%x timeout %d, want 0x%x", resp.SessionID, resp.TimeOut, raw.id)
	}
	raw2.get(root)

	// Back to A under a new epoch; an older epoch is refused.
	if code := postFlip(t, url, flipToken, 2, ensemble.Source); code != http.StatusOK {
		t.Fatalf("flip B→A: %d", code)
	}
	if code := postFlip(t, url, flipToken, 1, ensemble.Target); code != http.StatusConflict {
		t.Fatalf("flip for an older epoch: %d, want 409", code)
	}
	raw2.get(root)
	if _, err := c.Set(root+"/data", []byte("back on A"), -1); err != nil {
		t.Fatalf("write after the flip back: %v", err)
	}
	if d, _, err := ca.Get(root + "/data"); err != nil || string(d) != "back on A" {
		t.Fatalf("write after flipping back not on A: %q %v", d, err)
	}
	waitMirrored(t, p)
	if _, err := c.Set(root+"/ver", []byte("back on A"), 6); err != nil {
		t.Fatalf("setData with the version read on B, after flipping back: %v", err)
	}
	if err := c.Delete(root+"/ver", 6); err != zk.ErrBadVersion {
		t.Fatalf("delete with a stale version after flipping back: %v, want ErrBadVersion", err)
	}
	if err := c.Delete(root+"/ver", 7); err != nil {
		t.Fatalf("delete with the current version after flipping back: %v", err)
	}
	_, sta, err := ca.Get(root + "/eph")
	if err != nil || sta.EphemeralOwner != c.SessionID() {
		t.Fatalf("ephemeral on A after flipping back: owner 0x%x %v, want the client's 0x%x", sta.EphemeralOwner, err, c.SessionID())
	}
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateDisconnected || e.State == zk.StateExpired {
				t.Fatalf("client saw %v during the flips", e.State)
			}
			continue
		default:
		}
		break
	}
	ephOwnerB := st.EphemeralOwner
	c.Close()
	// Closing the session removes its ephemerals from both ensembles.
	deadline := time.Now().Add(10 * time.Second)
	for {
		okA, _, _ := ca.Exists(root + "/eph")
		okB, _, _ := cb.Exists(root + "/eph")
		if !okA && !okB {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ephemeral still on A=%v B=%v after the client closed its session (B owner 0x%x)", okA, okB, ephOwnerB)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEvents reads until n watch events for path have arrived in all.
func (rc *rawClient) waitEvents(path string, n int) {
	rc.t.Helper()
	for rc.events[path] < n {
		frame, err := rc.fr.Next()
		if err != nil {
			rc.t.Fatalf("waiting for a watch event on %s: %v", path, err)
		}
		var h jute.ReplyHeader
		d := jute.NewDecoder(frame)
		if err := h.Decode(d); err != nil {
			rc.t.Fatal(err)
		}
		if h.Xid == jute.XidWatchEvent {
			var ev jute.WatcherEvent
			if err := ev.Decode(d); err != nil {
				rc.t.Fatal(err)
			}
			rc.events[ev.Path]++
		}
	}
}

// TestFlipDeliversChangesOnce: one proxy flips to B by itself (a one-shot
// flip, which raises the fences) while another still serves from A, as
// when a proxy misses the barrier. A change through the other proxy
// before the flip fires from A once; its write after the flip is refused
// by A's fence: the client sees ConnectionLoss and A is unchanged. That
// proxy then finds the later epoch in the fence and moves to B by itself:
// the client's retry lands on B and fires once on the flipped proxy's
// re-armed watch. Without the fence the write landed on A (split brain).
func TestFlipDeliversChangesOnce(t *testing.T) {
	root := testRoot(t)
	p1, _ := startDualProxy(t, root)
	p2, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: secondary(t).Addrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	c2, _ := connect(t, []string{p2.Addr}, 4*time.Second)
	for _, n := range []string{"/before", "/after"} {
		if _, err := c2.Create(root+n, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	waitMirrored(t, p2)
	raw, _ := rawConnect(t, p1.Addr, 0, nil, 0)
	raw.getData(root+"/before", true)
	raw.getData(root+"/after", true)

	// A change through the other proxy just before the flip: fired from A.
	if _, err := c2.Set(root+"/before", []byte("1"), -1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p1.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	// A write through the other proxy, which missed the flip: fenced.
	if _, err := c2.Set(root+"/after", []byte("1"), -1); !errors.Is(err, zk.ErrConnectionClosed) {
		t.Fatalf("write through a proxy that missed the flip: %v, want ConnectionLoss (zk.ErrConnectionClosed)", err)
	}
	if data, _, err := directConn(t).Get(root + "/after"); err != nil || len(data) != 0 {
		t.Fatalf("a fenced write reached the old primary: %q, %v", data, err)
	}
	// The proxy moves to B by itself: the client's retry succeeds there.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c2.Set(root+"/after", []byte("1"), -1)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fenced proxy did not recover: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if e, _ := p2.Epoch(); e != 1 {
		t.Fatalf("the fenced proxy holds epoch %d after recovering, want 1", e)
	}
	waitMirrored(t, p2)
	raw.waitEvents(root+"/before", 1)
	raw.waitEvents(root+"/after", 1)
	// Both mirrors are done: a duplicate would be on the wire before the
	// replies to these reads (B fires before it answers a later read).
	waitMirrored(t, p1)
	raw.get(root + "/before")
	raw.get(root + "/after")
	if raw.events[root+"/before"] != 1 || raw.events[root+"/after"] != 1 {
		t.Fatalf("watch events: %v, want one per path", raw.events)
	}
}

// TestFlippedSessionSurvivesProxyRestart: after a flip, a proxy restarted
// with --state-dir (and the recorded primary) attaches a reconnecting
// client to the session that serves it on the new primary: the client's
// session does not expire and its ephemeral stays on B, owned by the same
// session. Without the record the new primary is shown the client's
// original id, which it does not know: expired. A version the client read
// before the flip keeps its meaning after the restart (the translation is
// recorded too).
func TestFlippedSessionSurvivesProxyRestart(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p1, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, ev := connect(t, []string{p1.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// A node the client reads at version 0 on A while B's copy is at 3.
	if _, err := c.Create(root+"/v", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p1)
	for i := 0; i < 3; i++ {
		if _, err := cb.Set(root+"/v", []byte("x"), -1); err != nil {
			t.Fatal(err)
		}
	}
	if _, vst, err := c.Get(root + "/v"); err != nil || vst.Version != 0 {
		t.Fatalf("read before the flip: version %d, %v", vst.Version, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p1.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	_, st, err := cb.Get(root + "/eph")
	if err != nil {
		t.Fatal(err)
	}
	p1.Close()
	// Restarted where its clients expect it, on the recorded primary.
	p2, err := proxytest.StartOn(p1.Addr, proxy.Config{FencePath: testFence(t), Upstream: b.Addrs(), Secondary: ens.Addrs(), PrimaryName: ensemble.Target,
		Epoch: 1, StateDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	// The client notices the closed connection, then reconnects.
	deadline := time.After(10 * time.Second)
	for disconnected := false; !disconnected || c.State() != zk.StateHasSession; {
		select {
		case e := <-ev:
			if e.State == zk.StateExpired {
				t.Fatal("the client's session expired after the proxy restarted")
			}
			if e.State == zk.StateDisconnected {
				disconnected = true
			}
		case <-deadline:
			t.Fatalf("client not back through the restarted proxy (state %v)", c.State())
		}
	}
	if _, err := c.Create(root+"/after", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the restart: %v", err)
	}
	// The version read before the flip keeps its meaning after the restart
	// (the translation is in --state-dir): without it, BADVERSION.
	if vst, err := c.Set(root+"/v", []byte("y"), 0); err != nil || vst.Version != 1 {
		t.Fatalf("conditional write with the version read before the flip, after the restart: version %d, %v", vst.Version, err)
	}
	time.Sleep(5 * time.Second) // past the session timeout: a session left behind would have expired
	_, st2, err := cb.Get(root + "/eph")
	if err != nil || st2.EphemeralOwner != st.EphemeralOwner {
		t.Fatalf("ephemeral on B after the restart: owner 0x%x %v, want 0x%x", st2.EphemeralOwner, err, st.EphemeralOwner)
	}
	if c.State() != zk.StateHasSession {
		t.Fatalf("client state %v", c.State())
	}
}

// TestFlipUnderLoad: clients writing (versioned and not), reading and
// holding ephemerals through a proxy flipped A→B→A→B see no error, no
// disconnect and no expiry; every acknowledged write is on the final
// primary; a client's conditional writes keep succeeding with the
// versions it read (its own counter never goes backwards).
func TestFlipUnderLoad(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	ca := directConn(t)
	const clients = 4
	type result struct {
		err  error
		last int // the last value acknowledged
	}
	stop := make(chan struct{})
	results := make(chan result, clients)
	var conns []*zk.Conn
	var evs []<-chan zk.Event
	for i := 0; i < clients; i++ {
		c, ev := connect(t, []string{p.Addr}, 4*time.Second)
		conns, evs = append(conns, c), append(evs, ev)
		if _, err := c.Create(fmt.Sprintf("%s/eph-%d", root, i), nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Create(fmt.Sprintf("%s/n-%d", root, i), []byte("0"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		go func() {
			path := fmt.Sprintf("%s/n-%d", root, i)
			n := 0
			for {
				select {
				case <-stop:
					results <- result{last: n}
					return
				default:
				}
				_, st, err := c.Get(path)
				if err == nil {
					// Conditional on the version just read: must succeed
					// (only this client writes the path).
					_, err = c.Set(path, []byte(fmt.Sprint(n+1)), st.Version)
				}
				if err != nil {
					results <- result{err: fmt.Errorf("client %d after %d writes: %w", i, n, err), last: n}
					return
				}
				n++
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	primaries := []ensemble.Name{ensemble.Target, ensemble.Source, ensemble.Target}
	for e, pr := range primaries {
		time.Sleep(300 * time.Millisecond) // some load before each flip
		var err error
		for try := 0; try < 5; try++ { // a drain over the pause budget answers "try again"
			if err = p.Flip(ctx, int64(e+1), pr); err == nil {
				break
			}
			t.Logf("flip %d: %v (retrying)", e+1, err)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	for i := 0; i < clients; i++ {
		r := <-results
		if r.err != nil {
			t.Error(r.err)
		}
	}
	for i, ev := range evs {
		for len(ev) > 0 {
			if e := <-ev; e.State == zk.StateDisconnected || e.State == zk.StateExpired {
				t.Errorf("client %d saw %v", i, e.State)
			}
		}
	}
	waitMirrored(t, p)
	for i, c := range conns {
		d, _, err := c.Get(fmt.Sprintf("%s/n-%d", root, i))
		if err != nil {
			t.Fatal(err)
		}
		bd, _, err := cb.Get(fmt.Sprintf("%s/n-%d", root, i))
		if err != nil || string(bd) != string(d) {
			t.Errorf("client %d: B (the primary) has %q, the client reads %q (%v)", i, bd, d, err)
		}
		ad, _, err := ca.Get(fmt.Sprintf("%s/n-%d", root, i))
		if err != nil || string(ad) != string(d) {
			t.Errorf("client %d: A (mirrored) has %q, want %q (%v)", i, ad, d, err)
		}
		if ok, _, _ := cb.Exists(fmt.Sprintf("%s/eph-%d", root, i)); !ok {
			t.Errorf("client %d: its ephemeral is gone from B", i)
		}
	}
}

// TestFlipSessionNotAttachedFindsItsSession: the new primary's server
// fails the session's move at the flip (injected in the proxy's dialer:
// the shadow's connection, which the relay takes over, breaks at the zxid
// probe, and a new connection is refused). The flip goes on; that session's client is told
// to reconnect (ConnectionLoss) and finds its session on the new primary
// through the identity mapping recorded before the attempt: no expiry,
// its ephemeral still there, its writes on B, its zxids increasing.
// Without the mapping the new primary was shown the client's id on A:
// expired.
func TestFlipSessionNotAttachedFindsItsSession(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// armed: refuse every dial to B, and break a connection to B that
	// sends the flip's zxid probe, until disarmed. The flip's own
	// connection to B (the standby, flip_conns.go) was opened with the
	// client's session and sends no probe.
	var armed atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !slices.Contains(b.Addrs(), addr) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		if armed.Load() > 0 {
			return nil, errors.New("injected: connection refused")
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return probeBreaker{Conn: c, armed: &armed}, nil
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Dial: dial, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, ev := connect(t, []string{p.Addr}, 6*time.Second)
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	_, before, err := c.Get(root + "/eph")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	armed.Store(1)
	err = p.Flip(ctx, 1, ensemble.Target)
	armed.Store(0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(15 * time.Second)
	for disconnected := false; !disconnected || c.State() != zk.StateHasSession; {
		select {
		case e := <-ev:
			if e.State == zk.StateExpired {
				t.Fatal("the client's session expired: it was not found on the new primary")
			}
			if e.State == zk.StateDisconnected {
				disconnected = true
			}
		case <-deadline:
			t.Fatalf("client not back (state %v)", c.State())
		}
	}
	if _, err := c.Create(root+"/after", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("write after the reconnect: %v", err)
	}
	if ok, _, err := cb.Exists(root + "/after"); err != nil || !ok {
		t.Fatalf("write after the reconnect not on B: %v %v", ok, err)
	}
	_, st, err := c.Get(root + "/eph")
	if err != nil {
		t.Fatalf("the client's ephemeral after the reconnect: %v", err)
	}
	if st.Mzxid < before.Mzxid || st.Czxid < before.Czxid {
		t.Fatalf("zxids went backwards: czxid 0x%x after 0x%x", st.Czxid, before.Czxid)
	}
}

// probeBreaker is a connection that breaks, while armed, when it sends the
// proxy's zxid probe at a flip (an exists of "/" with xid -18).
type probeBreaker struct {
	net.Conn
	armed *atomic.Int32
}

var probeHeader = []byte{0xff, 0xff, 0xff, 0xee, 0, 0, 0, byte(jute.OpExists)}

func (c probeBreaker) Write(p []byte) (int, error) {
	if c.armed.Load() > 0 && bytes.Contains(p, probeHeader) {
		c.Conn.Close()
		return 0, errors.New("injected: connection reset")
	}
	return c.Conn.Write(p)
}

// TestFlipCatchesUpASessionBetweenConnections: a flip happens while no
// relay holds a client's session (the client was re-opening it and that
// attempt failed: the old primary refused the proxy's connection), so the
// flip does not move it; its shadow session on B lives on. When the
// client re-opens it after the flip, the proxy checks its password on A,
// moves it to its shadow session on B and maps it: the client keeps its
// session. Without that, B was shown the client's id on A: expired.
func TestFlipCatchesUpASessionBetweenConnections(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var refuseA atomic.Bool
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if refuseA.Load() && slices.Contains(ens.Addrs(), addr) {
			return nil, errors.New("injected: connection refused")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Dial: dial, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	rc, _ := rawConnect(t, p.Addr, 0, nil, 0)
	rc.get("/")
	deadline := time.Now().Add(10 * time.Second)
	for _, ok := p.ShadowSession(rc.id); !ok; _, ok = p.ShadowSession(rc.id) {
		if time.Now().After(deadline) {
			t.Fatal("no shadow session for the client")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The client re-opens its session while A refuses the proxy: that
	// relay fails, the first one was shut down: no relay holds it.
	refuseA.Store(true)
	conn, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	req := jute.ConnectRequest{LastZxidSeen: rc.zxid, TimeOut: 4000, SessionID: rc.id, Passwd: rc.passwd}
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&req))); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	for p.SessionCount() != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	refuseA.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	rc2, resp := rawConnect(t, p.Addr, rc.id, rc.passwd, rc.zxid)
	if resp.TimeOut <= 0 || rc2.id != rc.id {
		t.Fatalf("re-open after the flip: session 0x%x timeout %d, want 0x%x alive", rc2.id, resp.TimeOut, rc.id)
	}
	rc2.get("/") // served, zxid not below the last one seen
}

// TestFlipKeepsSequentialNamesAscending (hard problem 2): a Mesos master
// contends with an ephemeral sequential json.info_ node and the lowest
// suffix leads, so after a flip the next sequential create under a parent
// must sort above every sibling the old primary ever named, including
// deleted ones, or a newcomer would take the lead. Created and deleted
// through the proxy on A (the mirror coalesces a create and delete it
// sees late, so B's counter falls behind), then a flip to B and back:
// each new name is above all before it, and both ensembles list the same
// children. Without the padding at the swap the first create on B failed
// with NODEEXISTS (B's counter named an existing child).
func TestFlipKeepsSequentialNamesAscending(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 6*time.Second)
	if _, err := c.Create(root+"/mesos", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var names []string
	create := func() string {
		t.Helper()
		n, err := c.Create(root+"/mesos/json.info_", []byte("{}"), zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll))
		if err != nil {
			t.Fatal(err)
		}
		if len(names) > 0 && n <= names[len(names)-1] {
			t.Fatalf("sequential create named %s after %s: not above every earlier sibling", n, names[len(names)-1])
		}
		names = append(names, n)
		return n
	}
	for range 5 {
		create()
	}
	// The highest and one in the middle go (masters that exited).
	for _, n := range []string{names[4], names[2]} {
		if err := c.Delete(n, -1); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for epoch, primary := range []ensemble.Name{ensemble.Target, ensemble.Source} {
		waitMirrored(t, p)
		if err := p.Flip(ctx, int64(epoch+1), primary); err != nil {
			t.Fatal(err)
		}
		create()
	}
	waitMirrored(t, p)
	a := directConn(t)
	kidsA, _, err := a.Children(root + "/mesos")
	if err != nil {
		t.Fatal(err)
	}
	kidsB, _, err := cb.Children(root + "/mesos")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(kidsA)
	slices.Sort(kidsB)
	if !slices.Equal(kidsA, kidsB) || len(kidsA) != 5 {
		t.Fatalf("children after two flips: A %v, B %v; want the same five", kidsA, kidsB)
	}
	if lowest := root + "/mesos/" + kidsA[0]; lowest != names[0] {
		t.Fatalf("lowest json.info_ is %s, want the first contender's %s (the leader must not change)", lowest, names[0])
	}
}
