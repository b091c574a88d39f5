package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// ensB is the secondary ensemble of the two-ensemble tests (one server:
// these tests are about the mirror, the CLI tests use three), started by
// the first test that needs it and stopped by TestMain.
var (
	ensBOnce sync.Once
	ensB     *zktest.Ensemble
	ensBErr  error
)

func secondary(t *testing.T) *zktest.Ensemble {
	t.Helper()
	ensBOnce.Do(func() {
		ensB, ensBErr = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "proxy-b"})
	})
	if ensBErr != nil {
		t.Fatal(ensBErr)
	}
	return ensB
}

// startDualProxy starts an in-process proxy writing to ens (primary) and
// the secondary ensemble, with the test's root created on both.
func startDualProxy(t *testing.T, root string) (*proxytest.Proxy, *zk.Conn) {
	t.Helper()
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, cb
}

// waitMirrored waits until the proxy has nothing left to mirror.
func waitMirrored(t *testing.T, p *proxytest.Proxy) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for p.MirrorBacklog() > 0 || metricValue(t, p.Registry, "zkmigrate_proxy_mirror_lag_seconds") > 0 {
		if time.Now().After(deadline) {
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("mirror backlog still %d after 20s; goroutines:\n%s", p.MirrorBacklog(), stacks.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertSameTree compares root on both ensembles with the replicator's
// digest (data, ACL, ephemeral or not, children).
func assertSameTree(t *testing.T, aAddrs, bAddrs []string, root string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The tests' private nodes belong to alice.
	opts := zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("alice:secret")}}}
	ca, err := zkclient.Dial(ctx, aAddrs, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := zkclient.Dial(ctx, bAddrs, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	_ = ca.Sync(ctx, root)
	_ = cb.Sync(ctx, root)
	v, err := replicator.Validate(ctx, replicator.Endpoints{Source: []*zkclient.Conn{ca}, Target: []*zkclient.Conn{cb}}, []string{root}, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, verdict := range v {
		if !verdict.Equal {
			t.Fatalf("%s differs between the ensembles: %+v", root, verdict)
		}
	}
}

// TestDualWriteMirrorsEveryWrite writes through a two-ensemble proxy with
// every kind of write and checks the secondary ends as the primary: same
// tree, same sequential names, the client's ephemerals owned by its shadow
// session, and gone from both when the client closes.
func TestDualWriteMirrorsEveryWrite(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	acl := zk.WorldACL(zk.PermAll)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := c.Create(root+"/cfg", []byte("v1"), 0, acl)
	must("create", err)
	_, err = c.Set(root+"/cfg", []byte("v2"), 0)
	must("set with version", err)
	_, err = c.Set(root+"/cfg", []byte("v3"), -1)
	must("set", err)
	_, err = c.Create(root+"/q", nil, 0, acl)
	must("create parent", err)
	var seqs []string
	for i := 0; i < 5; i++ {
		name, err := c.Create(root+"/q/n_", []byte(fmt.Sprint(i)), zk.FlagSequence, acl)
		must("sequential create", err)
		seqs = append(seqs, name)
	}
	must("delete a sequential", c.Delete(seqs[1], -1))
	eph, err := c.Create(root+"/q/e_", []byte("me"), zk.FlagEphemeral|zk.FlagSequence, acl)
	must("ephemeral sequential", err)
	_, err = c.Create(root+"/lock", []byte("me"), zk.FlagEphemeral, acl)
	must("ephemeral", err)
	_, err = c.Multi(
		&zk.CreateRequest{Path: root + "/m", Data: []byte("m"), Acl: acl},
		&zk.CreateRequest{Path: root + "/q/m_", Data: []byte("mseq"), Acl: acl, Flags: zk.FlagSequence},
		&zk.SetDataRequest{Path: root + "/cfg", Data: []byte("v4"), Version: -1},
		&zk.DeleteRequest{Path: seqs[2], Version: -1},
	)
	must("multi", err)
	must("addauth", c.AddAuth("digest", []byte("alice:secret")))
	_, err = c.SetACL(root+"/m", zk.DigestACL(zk.PermAll, "alice", "secret"), -1)
	must("setACL", err)
	_, err = c.Set(root+"/m", []byte("private"), -1)
	must("set under the new ACL", err)
	waitMirrored(t, p)
	assertSameTree(t, ens.Addrs(), ensB.Addrs(), root)

	names := func(conn *zk.Conn) []string {
		kids, _, err := conn.Children(root + "/q")
		must("children", err)
		sort.Strings(kids)
		return kids
	}
	if a, b := names(directConn(t)), names(cb); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("sequential names differ:\nA %v\nB %v", a, b)
	}
	shadowID, ok := p.ShadowSession(c.SessionID())
	if !ok {
		t.Fatal("no shadow session for the client")
	}
	for _, e := range []string{eph, root + "/lock"} {
		_, st, err := cb.Get(e)
		must("read ephemeral on B", err)
		if st.EphemeralOwner != shadowID {
			t.Errorf("%s on B owned by 0x%x, want the client's shadow session 0x%x", e, st.EphemeralOwner, shadowID)
		}
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ea, _, _ := directConn(t).Exists(root + "/lock")
		eb, _, _ := cb.Exists(root + "/lock")
		if !ea && !eb {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ephemeral after the client closed: on A %v, on B %v", ea, eb)
		}
		time.Sleep(50 * time.Millisecond)
	}
	assertSameTree(t, ens.Addrs(), ensB.Addrs(), root)
}

// TestDualWriteFailedWriteIsNotMirrored: a write the primary refuses (by
// ACL, by version) is refused to the client and leaves the secondary as it
// was. The node is made to differ on purpose: a mirror would overwrite it.
func TestDualWriteFailedWriteIsNotMirrored(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	a := directConn(t)
	if err := a.AddAuth("digest", []byte("bob:pw")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(root+"/locked", []byte("a"), 0, zk.DigestACL(zk.PermAll, "bob", "pw")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(root+"/versioned", []byte("a"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"/locked", "/versioned"} {
		if _, err := cb.Create(root+n, []byte("b"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	if _, err := c.Set(root+"/locked", []byte("x"), -1); !errors.Is(err, zk.ErrNoAuth) {
		t.Fatalf("set without credentials: %v, want NOAUTH", err)
	}
	if _, err := c.Set(root+"/versioned", []byte("x"), 7); !errors.Is(err, zk.ErrBadVersion) {
		t.Fatalf("set with a wrong version: %v, want BADVERSION", err)
	}
	if _, err := c.Create(root+"/marker", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if ok, _, _ := cb.Exists(root + "/marker"); !ok {
		t.Fatal("the successful write after them was not mirrored")
	}
	for _, n := range []string{"/locked", "/versioned"} {
		if d, _, err := cb.Get(root + n); err != nil || string(d) != "b" {
			t.Errorf("%s on B = %q, %v: a refused write was mirrored", n, d, err)
		}
	}
}

// TestReconfigIsRefusedInTwoEnsembleMode: reconfig cannot be applied to
// two ensembles as one; the client gets an error, the session goes on.
func TestReconfigIsRefusedInTwoEnsembleMode(t *testing.T) {
	root := testRoot(t)
	p, _ := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	if _, err := c.IncrementalReconfig(nil, []string{"3"}, -1); !errors.Is(err, zk.ErrReconfigDisabled) {
		t.Fatalf("reconfig through a two-ensemble proxy: %v, want ReconfigDisabled", err)
	}
	if _, err := c.Create(root+"/after", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("session after the refused reconfig: %v", err)
	}
}

// TestDualWriteSecondaryDownThenRepaired: with the secondary down, clients
// keep writing through the proxy without an error; the backlog holds the
// writes and is mirrored once the secondary returns.
func TestDualWriteSecondaryDownThenRepaired(t *testing.T) {
	root := testRoot(t)
	p, _ := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if err := ensB.Kill(1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := c.Create(fmt.Sprintf("%s/n%d", root, i), []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("write %d with the secondary down: %v", i, err)
		}
		if _, err := c.Set(root, []byte(fmt.Sprint(i)), -1); err != nil {
			t.Fatalf("set %d with the secondary down: %v", i, err)
		}
	}
	if n := p.MirrorBacklog(); n != 51 {
		t.Errorf("backlog with the secondary down: %d paths, want 51", n)
	}
	// Down for longer than the session timeout: the shadow session must
	// still be there (ZooKeeper restores sessions at start-up) or be
	// replaced, its ephemeral re-created.
	time.Sleep(5 * time.Second)
	if err := ensB.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	assertSameTree(t, ens.Addrs(), ensB.Addrs(), root)
}

// TestShadowSessionSurvivesProxyRestartWithStateDir: a proxy restarted
// with the same --state-dir resumes the shadow session of a client that
// reconnects within its timeout, so the client's ephemeral on the
// secondary stays, owned by the same shadow session.
func TestShadowSessionSurvivesProxyRestartWithStateDir(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	cfg := proxy.Config{FencePath: testFence(t), Upstream: ens.Addrs(), Secondary: b.Addrs(), StateDir: t.TempDir(), Logger: testLogger(t)}
	p1, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := connect(t, []string{p1.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/eph", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p1)
	before, ok := p1.ShadowSession(c.SessionID())
	if !ok {
		t.Fatal("no shadow session")
	}
	p1.Close()
	p2, err := proxytest.StartOn(p1.Addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p2.Close)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if after, ok := p2.ShadowSession(c.SessionID()); ok {
			if after != before {
				t.Fatalf("restarted proxy opened shadow session 0x%x, want the recorded 0x%x", after, before)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client's session did not come back through the restarted proxy")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(5 * time.Second) // past the session timeout: an abandoned shadow would have expired
	_, st, err := cb.Get(root + "/eph")
	if err != nil || st.EphemeralOwner != before {
		t.Fatalf("ephemeral on B after the restart: owner 0x%x, %v; want 0x%x", st.EphemeralOwner, err, before)
	}
}

// TestDualWriteWithTargetPrimary: with --primary target the roles swap:
// the target serves, the source gets the shadow sessions and the mirror
// (the direction after a flip).
func TestDualWriteWithTargetPrimary(t *testing.T) {
	root := testRoot(t) // on A (the source)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: testFence(t), Upstream: b.Addrs(), Secondary: ens.Addrs(), PrimaryName: ensemble.Target, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	if _, err := c.Create(root+"/p", []byte("on B first"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(root+"/e", nil, zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if st, _, err := cb.Exists(root + "/e"); err != nil || !st {
		t.Fatalf("the ephemeral is not on the primary (target): %v %v", st, err)
	}
	waitMirrored(t, p)
	assertSameTree(t, b.Addrs(), ens.Addrs(), root)
	shadow, _ := p.ShadowSession(c.SessionID())
	if _, st, err := directConn(t).Get(root + "/e"); err != nil || st.EphemeralOwner != shadow {
		t.Fatalf("ephemeral on the source: owner 0x%x, %v; want the shadow session 0x%x", st.EphemeralOwner, err, shadow)
	}
}
