package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// markerOwner returns the owner of session id's marker on addrs (0: none).
func markerOwner(t *testing.T, addrs []string, id int64) int64 {
	t.Helper()
	c, _ := connect(t, addrs, 10*time.Second)
	ok, st, err := c.Exists(replicator.SessionMarker(id))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return st.EphemeralOwner
}

// TestProxySessionsAreMarkedAndNeverCopiedBack: both upstream sessions of
// a client through a two-ensemble proxy (the primary's and the shadow)
// carry their marker on their own ensemble, owned by themselves, gone with
// them. A client's ephemeral that stays on the secondary while the primary
// lacks it (deleted there behind the proxy's back, as when the client's
// session ended while the shadow's close is pending) is never copied back
// by a replicator started beside the proxy with its primary (no checkpoint,
// no initial copy: every such node looks like a bypassing client's),
// while a bypassing client's ephemeral on the secondary still is. Without
// the markers the client's node came back on the primary.
func TestProxySessionsAreMarkedAndNeverCopiedBack(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 10*time.Second)
	eph := root + "/json.info_0000000001"
	if _, err := c.Create(eph, []byte("master"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	serving, ok := p.Server.ServingSession(c.SessionID())
	shadow, ok2 := p.Server.ShadowSession(c.SessionID())
	if !ok || !ok2 {
		t.Fatal("no serving or shadow session for the client")
	}
	// Polled: a server this test reads from may be a follower behind.
	for _, leg := range []struct {
		addrs []string
		id    int64
	}{{ens.Addrs(), serving}, {ensB.Addrs(), shadow}} {
		deadline := time.Now().Add(10 * time.Second)
		for o := markerOwner(t, leg.addrs, leg.id); o != leg.id; o = markerOwner(t, leg.addrs, leg.id) {
			if time.Now().After(deadline) {
				t.Fatalf("upstream session 0x%x: marker owned by 0x%x", leg.id, o)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if _, st, err := cb.Get(eph); err != nil || st.EphemeralOwner != shadow {
		t.Fatalf("the client's ephemeral on the secondary: %+v %v", st, err)
	}

	// The client's node goes from the primary, not from the secondary.
	direct := directConn(t)
	if err := direct.Delete(eph, -1); err != nil {
		t.Fatal(err)
	}
	bypass := root + "/bypass"
	if _, err := cb.Create(bypass, []byte("direct"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	const grace = time.Second
	repl, err := replicator.NewContinuous(replicator.ContinuousConfig{
		Dial:  replicator.Dialer{Ensembles: [2][]string{ens.Addrs(), ensB.Addrs()}}.Dial,
		Roots: []string{root}, Heartbeat: -1, ReconcileEvery: 300 * time.Millisecond,
		Primary: ensemble.Source, MirrorGrace: grace, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- repl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(grace + 20*time.Second)
	for {
		ok, _, err := direct.Exists(bypass)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bypassing client's ephemeral on the secondary never reached the primary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Decided in the same round, and again at every reconcile since.
	for end := time.Now().Add(2 * grace); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if ok, _, err := direct.Exists(eph); err != nil || ok {
			t.Fatalf("the client's ephemeral on the secondary was copied to the primary (%v)", err)
		}
	}
	if ok, _, err := direct.Exists(replicator.SessionMarker(shadow)); err != nil || ok {
		t.Fatalf("the shadow's marker was copied to the primary (%v)", err)
	}

	// The markers go with their sessions.
	c.Close()
	for _, side := range []struct {
		addrs []string
		id    int64
	}{{ens.Addrs(), serving}, {ensB.Addrs(), shadow}} {
		deadline := time.Now().Add(20 * time.Second)
		for markerOwner(t, side.addrs, side.id) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("session 0x%x's marker outlived its session", side.id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestUnmarkableSessionIsServedAndReported: on an ensemble where the
// proxy's sessions may create nothing under "/" (and no one created the
// markers' parent), the marker cannot be created: the proxy says so
// (mirror_failures_total{reason="session_unmarked"}, a WARN with the fix)
// and the client's session goes on untouched, its writes mirrored. Once
// the parents exist (created with credentials that may, as the replicator
// does at start), the markers' ACL lets any session mark itself there.
func TestUnmarkableSessionIsServedAndReported(t *testing.T) {
	ctx := context.Background()
	locked, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "proxy-locked"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(locked.Close)
	admin, err := zkclient.Dial(ctx, locked.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("admin:pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	root := "/open"
	if _, err := admin.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	cb, _ := connect(t, secondary(t).Addrs(), 10*time.Second)
	if _, err := cb.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && err != zk.ErrNodeExists {
		t.Fatal(err)
	}
	// Only READ on "/" for the world (the admin keeps everything).
	if err := admin.SetACL(ctx, "/", []jute.ACL{{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}},
		{Perms: jute.PermAll, ID: jute.Id{Scheme: "auth", ID: ""}}}, -1); err != nil {
		t.Fatal(err)
	}
	p, err := proxytest.Start(proxy.Config{FencePath: "/open/fence", Upstream: locked.Addrs(), Secondary: ensB.Addrs(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, ev := connect(t, []string{p.Addr}, 10*time.Second)
	eph := root + "/eph"
	if _, err := c.Create(eph, []byte("e"), zk.FlagEphemeral, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	if _, st, err := cb.Get(eph); err != nil || st.EphemeralOwner == 0 {
		t.Fatalf("the client's ephemeral was not mirrored: %+v %v", st, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, p.Registry, "zkmigrate_proxy_mirror_failures_total", "reason", "session_unmarked") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the session the proxy could not mark was not reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	serving, _ := p.Server.ServingSession(c.SessionID())
	if o := markerOwner(t, locked.Addrs(), serving); o != 0 {
		t.Fatalf("a marker under a root the session may not write: owner 0x%x", o)
	}
	if _, _, err := c.Get(eph); err != nil {
		t.Fatalf("the client's session after the failed marker: %v", err)
	}
	for done := false; !done; {
		select {
		case e := <-ev:
			if e.State == zk.StateDisconnected || e.State == zk.StateExpired {
				t.Fatalf("the client saw %v", e.State)
			}
		default:
			done = true
		}
	}
	// The fix the WARN names, as the replicator does it with its
	// credentials at start: the next session is marked.
	for _, r := range replicator.SessionMarkerCreates(0, true)[:2] {
		if _, err := admin.Create(ctx, r.Path, r.Data, r.ACL, r.Flags); err != nil {
			t.Fatal(err)
		}
	}
	c2, _ := connect(t, []string{p.Addr}, 10*time.Second)
	serving2, _ := p.Server.ServingSession(c2.SessionID())
	deadline = time.Now().Add(10 * time.Second)
	for o := markerOwner(t, locked.Addrs(), serving2); o != serving2; o = markerOwner(t, locked.Addrs(), serving2) {
		if time.Now().After(deadline) {
			t.Fatalf("a session opened once the parents exist: marker owned by 0x%x", o)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
