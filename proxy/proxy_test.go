package proxy_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func TestGoClientOperationsThroughProxy(t *testing.T) {
	root := testRoot(t)
	p := startProxy(t)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	direct := directConn(t)

	// create / get / set / delete with versions.
	path := root + "/node"
	if _, err := c.Create(path, []byte("v1"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	data, st, err := c.Get(path)
	if err != nil || string(data) != "v1" || st.Version != 0 {
		t.Fatalf("get = %q %+v %v", data, st, err)
	}
	if _, err := c.Set(path, []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Set(path, []byte("v3"), 0); !errors.Is(err, zk.ErrBadVersion) {
		t.Fatalf("stale conditional set: got %v, want ErrBadVersion", err)
	}
	if got, _, _ := direct.Get(path); string(got) != "v2" {
		t.Fatalf("direct read after set through proxy = %q", got)
	}
	if _, _, err := c.Get(root + "/missing"); !errors.Is(err, zk.ErrNoNode) {
		t.Fatalf("get missing: %v", err)
	}

	// sequential and ephemeral nodes.
	s1, err := c.Create(root+"/seq-", nil, zk.FlagSequence, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.Create(root+"/seq-", nil, zk.FlagSequence|zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s1, root+"/seq-") || len(s1) != len(root+"/seq-")+10 || s2 <= s1 {
		t.Fatalf("sequential names %q, %q", s1, s2)
	}
	_, st, err = direct.Get(s2)
	if err != nil || st.EphemeralOwner != c.SessionID() {
		t.Fatalf("ephemeral owner = %x, want client session %x (err %v)", st.EphemeralOwner, c.SessionID(), err)
	}

	// multi: success, then a failing multi that must change nothing.
	res, err := c.Multi(&zk.CreateRequest{Path: root + "/m1", Data: []byte("a"), Acl: zk.WorldACL(zk.PermAll)},
		&zk.SetDataRequest{Path: path, Data: []byte("m"), Version: 1})
	if err != nil || len(res) != 2 || res[0].String != root+"/m1" {
		t.Fatalf("multi = %+v, %v", res, err)
	}
	_, err = c.Multi(&zk.CreateRequest{Path: root + "/m2", Acl: zk.WorldACL(zk.PermAll)},
		&zk.DeleteRequest{Path: root + "/nope", Version: -1})
	if err == nil {
		t.Fatal("failing multi succeeded")
	}
	if ok, _, _ := direct.Exists(root + "/m2"); ok {
		t.Fatal("failed multi left its first op applied")
	}

	// children and delete.
	kids, _, err := c.Children(root)
	if err != nil || len(kids) != 4 {
		t.Fatalf("children = %v, %v", kids, err)
	}
	if err := c.Delete(root+"/m1", 0); err != nil {
		t.Fatal(err)
	}
}

func TestWatchesThroughProxy(t *testing.T) {
	root := testRoot(t)
	p := startProxy(t)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	direct := directConn(t)

	_, _, dataW, err := c.GetW(root)
	if err != nil {
		t.Fatal(err)
	}
	_, _, childW, err := c.ChildrenW(root)
	if err != nil {
		t.Fatal(err)
	}
	_, _, existW, err := c.ExistsW(root + "/later")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Create(root+"/later", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, existW, 5*time.Second); e.Type != zk.EventNodeCreated || e.Path != root+"/later" {
		t.Fatalf("exists watch: %+v", e)
	}
	if e := waitEvent(t, childW, 5*time.Second); e.Type != zk.EventNodeChildrenChanged || e.Path != root {
		t.Fatalf("child watch: %+v", e)
	}
	if _, err := direct.Set(root, []byte("x"), -1); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, dataW, 5*time.Second); e.Type != zk.EventNodeDataChanged || e.Path != root {
		t.Fatalf("data watch: %+v", e)
	}
}

func TestDigestAuthAndACLThroughProxy(t *testing.T) {
	root := testRoot(t)
	p := startProxy(t)
	owner, _ := connect(t, []string{p.Addr}, 10*time.Second)
	if err := owner.AddAuth("digest", []byte("alice:secret")); err != nil {
		t.Fatal(err)
	}
	path := root + "/private"
	if _, err := owner.Create(path, []byte("s3cret"), 0, zk.DigestACL(zk.PermAll, "alice", "secret")); err != nil {
		t.Fatal(err)
	}
	if got, _, err := owner.Get(path); err != nil || string(got) != "s3cret" {
		t.Fatalf("owner read = %q, %v", got, err)
	}
	stranger, _ := connect(t, []string{p.Addr}, 10*time.Second)
	if _, _, err := stranger.Get(path); !errors.Is(err, zk.ErrNoAuth) {
		t.Fatalf("stranger read: %v, want ErrNoAuth", err)
	}
	acl, _, err := owner.GetACL(path)
	if err != nil || len(acl) != 1 || acl[0].Scheme != "digest" || !strings.HasPrefix(acl[0].ID, "alice:") {
		t.Fatalf("acl = %+v, %v", acl, err)
	}
}

// TestSessionSurvivesUpstreamServerDeath kills the server a session is
// attached to. The client must keep its session id, its ephemeral node and
// its watches, and never see an expired or even a disconnected state.
func TestSessionSurvivesUpstreamServerDeath(t *testing.T) {
	root := testRoot(t)
	p := startProxy(t)
	c, events := connect(t, []string{p.Addr}, 10*time.Second)
	direct := directConn(t)
	sid := c.SessionID()

	eph, err := c.Create(root+"/eph", []byte("mine"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	_, _, dataW, err := c.GetW(root)
	if err != nil {
		t.Fatal(err)
	}
	addr := killUpstreamOf(t, p, sid)

	// A change made while the session moves must still fire its watch.
	retryWrite(t, "set during move", func() error {
		_, err := direct.Set(root, []byte("changed-during-move"), -1)
		return err
	})
	if e := waitEvent(t, dataW, 15*time.Second); e.Type != zk.EventNodeDataChanged {
		t.Fatalf("watch after move: %+v", e)
	}
	// The session works, has the same id and still owns its ephemeral.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, st, err := c.Get(eph)
		if err == nil {
			if st.EphemeralOwner != sid {
				t.Fatalf("ephemeral owner %x, want %x", st.EphemeralOwner, sid)
			}
			break
		}
		if !errors.Is(err, zk.ErrConnectionClosed) || time.Now().After(deadline) {
			t.Fatalf("get after move: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c.SessionID() != sid {
		t.Fatalf("session id changed from %x to %x", sid, c.SessionID())
	}
	if now, ok := p.SessionUpstream(sid); !ok || now == addr {
		t.Fatalf("session still on %s (ok=%v)", now, ok)
	}
	for {
		select {
		case e := <-events:
			if e.State == zk.StateExpired || e.State == zk.StateDisconnected {
				t.Fatalf("client saw %v while the proxy moved its session", e.State)
			}
			continue
		default:
		}
		break
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_upstream_reconnects_total", "result", "ok"); got < 1 {
		t.Fatalf("upstream_reconnects_total{result=ok} = %v", got)
	}
}

func TestFourLetterWordsOnProxyPort(t *testing.T) {
	p := startProxy(t)
	if out, err := zktest.FourLetterWord(p.Addr, "ruok", 5*time.Second); err != nil || out != "imok" {
		t.Fatalf("ruok = %q, %v", out, err)
	}
	for _, w := range []string{"srvr", "stat", "mntr", "envi", "isro"} {
		out, err := zktest.FourLetterWord(p.Addr, w, 5*time.Second)
		if err != nil || out == "" {
			t.Fatalf("%s = %q, %v", w, out, err)
		}
	}
	if out, _ := zktest.FourLetterWord(p.Addr, "srvr", 5*time.Second); !strings.Contains(out, "Zookeeper version") {
		t.Fatalf("srvr does not look like ZooKeeper's: %q", out)
	}
}

// TestBadClientsAreDisconnectedOthersUnaffected sends garbage, an oversized
// frame and an unknown opcode while a well-behaved session keeps working.
func TestBadClientsAreDisconnectedOthersUnaffected(t *testing.T) {
	root := testRoot(t)
	p := startProxy(t)
	good, _ := connect(t, []string{p.Addr}, 10*time.Second)

	expectClosed := func(name string, payload []byte) {
		t.Helper()
		conn, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = conn.Write(payload)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(conn); err != nil {
			t.Fatalf("%s: connection not closed by the proxy: %v", name, err)
		}
	}
	expectClosed("oversized frame", []byte{0x7f, 0, 0, 0})
	expectClosed("negative length", []byte{0xff, 0xff, 0xff, 0xf0})
	expectClosed("truncated connect", jute.AppendFrame(nil, []byte{0, 0, 0, 0, 1}))

	// A session that sends an unknown opcode gets UNIMPLEMENTED, in order,
	// and keeps working; one that then sends a malformed body is closed.
	conn, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fr := jute.NewFrameReader(bufioReader(conn), 1<<20)
	cr := jute.ConnectRequest{TimeOut: 10000, Passwd: make([]byte, 16)}
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&cr))); err != nil {
		t.Fatal(err)
	}
	if _, err := fr.Next(); err != nil {
		t.Fatalf("connect response: %v", err)
	}
	var e jute.Encoder
	(&jute.RequestHeader{Xid: 1, Type: 999}).Encode(&e)
	unknown := append([]byte(nil), e.Bytes()...)
	e.Reset(nil)
	(&jute.RequestHeader{Xid: 2, Type: int32(jute.OpExists)}).Encode(&e)
	(&jute.ExistsRequest{Path: root}).Encode(&e)
	exists := append([]byte(nil), e.Bytes()...)
	_, _ = conn.Write(append(jute.AppendFrame(nil, unknown), jute.AppendFrame(nil, exists)...))
	for want := int32(1); want <= 2; want++ {
		frame, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		var h jute.ReplyHeader
		_ = h.Decode(jute.NewDecoder(frame))
		if h.Xid != want {
			t.Fatalf("reply xid %d, want %d (order kept)", h.Xid, want)
		}
		if want == 1 && jute.Code(h.Err) != jute.CodeUnimplemented {
			t.Fatalf("unknown opcode answered %s", jute.Code(h.Err))
		}
		if want == 2 && h.Err != 0 {
			t.Fatalf("exists after unknown opcode: %s", jute.Code(h.Err))
		}
	}
	e.Reset(nil)
	(&jute.RequestHeader{Xid: 3, Type: int32(jute.OpGetData)}).Encode(&e)
	e.Int(1 << 30) // path length far beyond the frame
	_, _ = conn.Write(jute.AppendFrame(nil, e.Bytes()))
	if _, err := fr.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("malformed getData: want the connection closed, got %v", err)
	}

	if _, err := good.Create(root+"/still-fine", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("well-behaved client broken by bad ones: %v", err)
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_bad_frames_total", "reason", "too_large"); got < 1 {
		t.Fatalf("bad_frames_total{too_large} = %v", got)
	}
}
