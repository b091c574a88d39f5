package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestReverseFlipGuardPassesBesideABypassWriterOnA: B is the primary (a
// rollback from phase 3 to 1 is under way) and a client bypassing the
// proxies creates a znode on A, the secondary, every 200 ms. The sync
// copies each to B only after its mirror grace (5 s), so A and B are
// never equal at one instant; the reverse flip's guard must still pass,
// since every difference is such a write, which A, the new primary,
// already holds. Before, it refused until its deadline ("digests of /x
// differ between B and A: /x/direct/w-...: only on target": the demo's
// rollback with the acceptance scenario's direct writer, SPEC 5c). Every
// write the client made is then on B too.
func TestReverseFlipGuardPassesBesideABypassWriterOnA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	ens, conns := twoEnsembles(t, [2]string{"grd-a", "grd-b"}, "/x", "/x/direct")
	var cfg control.Config
	cfg.Migration.ID = "grd"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = ens[0].ConnectString(), ens[1].ConnectString()
	cfg.Migration.Paths = []string{"/x"}
	cfg.Sync.LagThresholdMS = 1000
	raw, err := json.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &control.Migration{ID: "grd", Config: control.MigrationConfig{SourceZK: cfg.Migration.SourceZK, TargetZK: cfg.Migration.TargetZK, Raw: raw},
		Step: control.StepMastersOffA, Status: control.StatusRollingBack, RollbackTo: control.StepDeployB,
		Epoch: 1, Primary: ensemble.Target, Flip: &control.Flip{Epoch: 1, Primary: ensemble.Target, Committed: true, Done: true},
		Sync: control.SyncState{Running: true, Node: "n1", Copied: true}}
	st := &control.State{Migrations: map[string]*control.Migration{m.ID: m}}
	sy := &Syncer{IsLeader: func() bool { return true }, NodeID: "n1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Apply: func(context.Context, control.Command) error { return nil }, State: func() *control.State { return st }}
	t.Cleanup(func() { _ = sy.Undo(ctx, m) })
	r, err := sy.start(m)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sync's first reconcile finds /x equal", func() bool { return r.cont.DigestsEqual()["/x"] })

	// The bypassing client on A, owned here: stopped before the end.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; wctx.Err() == nil; n++ {
			p := fmt.Sprintf("/x/direct/w-%04d", n)
			if _, err := conns[0].Create(wctx, p, []byte("direct"), zkclient.OpenACL, 0); err == nil {
				mu.Lock()
				made = append(made, p)
				mu.Unlock()
			}
			select {
			case <-wctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	defer func() { stop(); wg.Wait() }()
	waitFor(t, "the sync deferring the bypass writes", func() bool { return r.cont.Deferred() >= 3 })

	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = sy.FlipReady(gctx, m, ensemble.Target, ensemble.Source)
	cancel()
	if err != nil {
		t.Fatalf("the reverse flip's guard beside a client writing A directly: %v", err)
	}
	stop()
	wg.Wait()
	waitFor(t, "every direct write on B", func() bool {
		kids, _, err := conns[1].Children(ctx, "/x/direct")
		if err != nil {
			return false
		}
		have := map[string]bool{}
		for _, k := range kids {
			have["/x/direct/"+k] = true
		}
		mu.Lock()
		defer mu.Unlock()
		for _, p := range made {
			if !have[p] {
				return false
			}
		}
		return len(made) > 0
	})
}

// TestGuardAcceptsOnlyTheSyncsBypassWrites: the trees the guard compares,
// with the creates and deletes the sync holds as bypass writes on the new
// primary taken as copied: equal only when nothing else differs (a write
// of the old primary, a bypass write the sync does not hold, a bypass
// setData: versions).
func TestGuardAcceptsOnlyTheSyncsBypassWrites(t *testing.T) {
	node := func(p, data string, kids ...string) *replicator.Node {
		return &replicator.Node{Path: p, Data: []byte(data), ACL: zkclient.OpenACL, Children: kids, Stat: jute.Stat{Mzxid: 1}}
	}
	tree := func(nodes ...*replicator.Node) *replicator.Tree {
		t := &replicator.Tree{Root: "/x", Nodes: map[string]*replicator.Node{}}
		for _, n := range nodes {
			t.Nodes[n.Path] = n
		}
		return t
	}
	// from: the old primary; to: the new one, with writes made on it
	// directly (w-2 created, d deleted, w-1's data set) and one write on
	// the old primary it lacks (p-1).
	from := tree(node("/x", "", "d", "p-1", "w-1"), node("/x/d", ""), node("/x/p-1", ""), node("/x/w-1", "old"))
	to := tree(node("/x", "", "w-1", "w-2"), node("/x/w-1", "new"), node("/x/w-2", ""))
	bypass := map[string]bool{"/x/w-1": true, "/x/w-2": true, "/x/d": true}
	for _, tc := range []struct {
		name     string
		copying  func(p string) bool
		equal    bool
		accepted int
		left     string
	}{
		{"nothing accepted", func(string) bool { return false }, false, 0, "/x/d"},
		{"the bypass writes, not the old primary's", func(p string) bool { return bypass[p] }, false, 2, "/x/p-1"},
		{"all but one bypass write", func(p string) bool { return bypass[p] && p != "/x/w-2" }, false, 1, "/x/w-2"},
		// A setData not yet copied: the proxies would show it at the
		// version the old primary still has.
		{"a bypass setData", func(p string) bool { return bypass[p] }, false, 2, "/x/w-1"},
	} {
		exp, acc := withBypassWrites(from, to, func(p string, _ *replicator.Node) bool { return tc.copying(p) })
		if got := exp.Digest() == to.Digest(); got != tc.equal || len(acc) != tc.accepted {
			t.Fatalf("%s: equal %v with %d accepted (%v), want %v with %d", tc.name, got, len(acc), acc, tc.equal, tc.accepted)
		}
		if d := replicator.Compare(exp, to, 0); len(d) == 0 || !strings.Contains(fmt.Sprint(d), tc.left) {
			t.Fatalf("%s: differences %v do not name %s", tc.name, d, tc.left)
		}
	}
	// Without the old primary's write and the setData, the bypass create
	// and delete are all that differ.
	delete(from.Nodes, "/x/p-1")
	from.Nodes["/x"] = node("/x", "", "d", "w-1")
	from.Nodes["/x/w-1"] = node("/x/w-1", "new")
	exp, acc := withBypassWrites(from, to, func(p string, _ *replicator.Node) bool { return bypass[p] })
	if exp.Digest() != to.Digest() || len(acc) != 2 {
		t.Fatalf("only bypass writes differ: %v, accepted %v", replicator.Compare(exp, to, 0), acc)
	}
	if _, ok := from.Nodes["/x/d"]; !ok || len(from.Nodes["/x"].Children) != 2 {
		t.Fatal("withBypassWrites changed the tree it was given")
	}
}
