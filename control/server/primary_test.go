package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestReverseFlipPrimaryHoldsAgainstTheRecordedOne: a rollback across the
// flip raises the fences to A (the reverse barrier, proxies held) long
// before rolled-back records primary A, and the sync supervisor meanwhile
// acts on the recorded state, primary B. The replicator must keep A as the
// proxies' primary from the fence on: when a swapped proxy's client writes
// A and the proxy's mirror brings an older state to B, A's write reaches B
// and the mirror's late state never lands on A. Before the fix the
// supervisor gave the replicator B back within a tick, and it copied B's
// late state over the client's write on A (the demo's register history:
// versions no client wrote, SPEC.md 5c).
func TestReverseFlipPrimaryHoldsAgainstTheRecordedOne(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	ens, conns := twoEnsembles(t, [2]string{"rev-a", "rev-b"}, "/x", "/x/r") // equal on both sides: the copy and flip are behind us
	var cfg control.Config
	cfg.Migration.ID = "rev"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = ens[0].ConnectString(), ens[1].ConnectString()
	cfg.Migration.Paths = []string{"/x"}
	raw, err := json.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Rolling back from phase 3 to phase 1: the flip to B (epoch 1) is
	// done; the reverse flip runs at epoch 2 and is recorded only by
	// rolled-back.
	m := &control.Migration{ID: "rev", Config: control.MigrationConfig{SourceZK: cfg.Migration.SourceZK, TargetZK: cfg.Migration.TargetZK, Raw: raw},
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

	// The reverse barrier raises the fences to A; the supervisor's next
	// tick still reads primary B.
	if _, err := sy.Fence(ctx, m, 2, ensemble.Source, nil); err != nil {
		t.Fatal(err)
	}
	if err := sy.supervise(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The swapped proxy's mirror writes an older state to B, its client
	// writes A.
	if _, err := conns[1].Set(ctx, "/x/r", []byte("mirror, late"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := conns[0].Set(ctx, "/x/r", []byte("client"), -1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's /x/r on B", func() bool {
		da, _, errA := conns[0].Get(ctx, "/x/r")
		db, _, errB := conns[1].Get(ctx, "/x/r")
		return errA == nil && errB == nil && string(da) == string(db)
	})
	data, stat, err := conns[0].Get(ctx, "/x/r")
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "client" || stat.Version != 1 {
		t.Fatalf("A's /x/r is %q at version %d, want the client's write at version 1: the replicator wrote B's late state onto A, the new primary", data, stat.Version)
	}
}

// waitFor polls cond every 50 ms for up to a minute (a loaded machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute", what)
		}
	}
}

// TestPhase1VerifyOutlivesAStoppedSync: phase 1's verification keeps
// going when the sync it started is stopped under it (the control node
// lost and regained leadership: the supervisor stops its syncs, and leaves
// phase 1's first start to the executor until the start is recorded). It
// starts the sync again and succeeds; before, it watched the stopped
// replicator until its timeout (the demo's phase 1 failed with "digests
// map[]" on a loaded machine).
func TestPhase1VerifyOutlivesAStoppedSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	var addrs [2]string
	var ens [2]*zktest.Ensemble
	for i, name := range []string{"ver-a", "ver-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		addrs[i], ens[i] = e.ConnectString(), e
	}
	c, err := zkclient.Dial(ctx, []string{addrs[0]}, zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create(ctx, "/x", []byte("v"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	var cfg control.Config
	cfg.Migration.ID = "ver"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = addrs[0], addrs[1]
	cfg.Migration.Paths = []string{"/x"}
	raw, err := json.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &control.Migration{ID: "ver", Config: control.MigrationConfig{SourceZK: addrs[0], TargetZK: addrs[1], Raw: raw},
		Step: control.StepDeployB, Status: control.StatusRunning, Primary: ensemble.Source}
	st := &control.State{Migrations: map[string]*control.Migration{m.ID: m}}
	sy := &Syncer{IsLeader: func() bool { return true }, NodeID: "n1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		VerifyTimeout: time.Minute, Apply: func(context.Context, control.Command) error { return nil }, State: func() *control.State { return st }}
	t.Cleanup(func() { _ = sy.Undo(ctx, m) })
	// B is down: the verification cannot succeed before its sync is
	// stopped under it.
	if err := ens[1].Kill(1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sy.Verify(ctx, m) }()
	waitFor(t, "the verification's sync", func() bool { return sy.run(m.ID) != nil })
	sy.stopAll() // leadership lost and regained while it verifies
	if err := ens[1].Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("phase 1's verification after its sync was stopped: %v", err)
	}
}

// twoEnsembles starts one-server ensembles A and B (named names[0] and
// names[1]), each with paths created at "v0", and returns them with a
// session on each.
func twoEnsembles(t *testing.T, names [2]string, paths ...string) ([2]*zktest.Ensemble, [2]*zkclient.Conn) {
	t.Helper()
	ctx := context.Background()
	var conns [2]*zkclient.Conn
	var ens [2]*zktest.Ensemble
	for i, name := range names {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		c, err := zkclient.Dial(ctx, e.Addrs(), zkclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		for _, p := range paths {
			if _, err := c.Create(ctx, p, []byte("v0"), zkclient.OpenACL, 0); err != nil {
				t.Fatal(err)
			}
		}
		ens[i], conns[i] = e, c
	}
	return ens, conns
}
