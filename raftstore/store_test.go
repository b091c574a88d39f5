package raftstore

import (
	"context"
	"errors"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := zktest.StableAddr() // below the ephemeral range, see StablePort
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func open(t *testing.T, id, dir, addr string, bootstrap bool) *Node {
	t.Helper()
	n, err := Open(Config{ID: id, Dir: dir, BindAddr: addr, Bootstrap: bootstrap,
		HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cluster starts three nodes: c1 bootstraps, c2 and c3 join.
func cluster(t *testing.T) ([]*Node, []string, []string) {
	t.Helper()
	base := t.TempDir()
	var nodes []*Node
	var dirs, addrs []string
	for i := 1; i <= 3; i++ {
		dir, addr := filepath.Join(base, fmt.Sprintf("c%d", i)), freeAddr(t)
		dirs, addrs = append(dirs, dir), append(addrs, addr)
		nodes = append(nodes, open(t, fmt.Sprintf("c%d", i), dir, addr, i == 1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[0].WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		if err := nodes[0].Join(nodes[i].ID(), nodes[i].Addr()); err != nil {
			t.Fatal(err)
		}
	}
	promote(t, nodes[0], nodes, 3)
	return nodes, dirs, addrs
}

// inProcess answers Autopilot's stats from the nodes of this test.
func inProcess(nodes []*Node) func(context.Context, string, string) (ServerStats, error) {
	return func(_ context.Context, id, _ string) (ServerStats, error) {
		for _, n := range nodes {
			if n != nil && n.ID() == id {
				return n.Stats(), nil
			}
		}
		return ServerStats{}, fmt.Errorf("no node %s", id)
	}
}

// promote runs an Autopilot on leader until voters servers vote.
func promote(t *testing.T, leader *Node, nodes []*Node, voters int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	ap := &Autopilot{Node: leader, Stats: inProcess(nodes), StabilizationTime: 200 * time.Millisecond, Interval: 50 * time.Millisecond}
	go func() { defer close(done); _ = ap.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if countVoters(t, leader) == voters {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("never %d voters", voters)
}

func countVoters(t *testing.T, n *Node) int {
	t.Helper()
	servers, err := n.Servers()
	if err != nil {
		t.Fatal(err)
	}
	v := 0
	for _, s := range servers {
		if s.Voter {
			v++
		}
	}
	return v
}

func leaderOf(t *testing.T, nodes []*Node) *Node {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n != nil && n.IsLeader() {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}

func cmd(kind control.Kind, step control.Step) control.Command {
	return control.Command{Kind: kind, Migration: "m1", By: "test", Time: time.Unix(1700000000, 0).UTC(), Step: step}
}

// waitSame waits until every node has applied the same state.
func waitSame(t *testing.T, nodes []*Node) *control.State {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var first *control.State
		same := true
		for _, n := range nodes {
			if n == nil {
				continue
			}
			st := n.State()
			if first == nil {
				first = st
			} else if !reflect.DeepEqual(first, st) {
				same = false
			}
		}
		if same {
			return first
		}
		if time.Now().After(deadline) {
			t.Fatal("nodes did not converge to one state")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeaderKilledMidPhaseLosesNothing runs a migration to the middle of
// phase 1 on three nodes, kills the leader, finishes the phase on the new
// leader, and restarts the killed node from its files: every node ends with
// the same state and the full audit trail.
func TestLeaderKilledMidPhaseLosesNothing(t *testing.T) {
	ctx := context.Background()
	nodes, dirs, addrs := cluster(t)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	l := leaderOf(t, nodes)
	create := cmd(control.CmdCreate, 0)
	create.Config = &control.MigrationConfig{SourceZK: "a:2181", TargetZK: "b:2181"}
	for _, c := range []control.Command{create, cmd(control.CmdStart, 0), cmd(control.CmdStepRunning, control.StepDeployB)} {
		if err := l.Apply(ctx, c); err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
	}
	// A follower refuses writes and names the leader.
	for _, n := range nodes {
		if n != l {
			err := n.Apply(ctx, cmd(control.CmdPause, 0))
			var nl *NotLeaderError
			if !errors.As(err, &nl) || nl.Leader != l.Addr() {
				t.Fatalf("follower apply: %v", err)
			}
			break
		}
	}
	waitSame(t, nodes)

	// Kill the leader mid-phase.
	killed := -1
	for i, n := range nodes {
		if n == l {
			killed = i
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	nodes[killed] = nil
	l2 := leaderOf(t, nodes)
	// Repeating the dead leader's last action is refused, not done twice.
	if err := l2.Apply(ctx, cmd(control.CmdStart, 0)); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("repeated start on the new leader: %v", err)
	}
	if err := l2.Apply(ctx, cmd(control.CmdStepSucceeded, control.StepDeployB)); err != nil {
		t.Fatal(err)
	}
	if err := l2.Apply(ctx, cmd(control.CmdAdvance, control.StepFlip)); err != nil {
		t.Fatal(err)
	}
	// The killed node comes back from disk and catches up.
	nodes[killed] = open(t, fmt.Sprintf("c%d", killed+1), dirs[killed], addrs[killed], false)
	st := waitSame(t, nodes)
	m := st.Migrations["m1"]
	if m == nil || m.Step != control.StepFlip || m.Status != control.StatusRunning {
		t.Fatalf("migration after failover: %+v", m)
	}
	// create, start, step-running, the refused repeated start, succeeded,
	// advance; the follower's refusal never reached the log.
	if len(st.Audit) != 6 || st.Audit[3].Result == "ok" {
		t.Fatalf("audit has %d entries, want 6 with the refused one: %+v", len(st.Audit), st.Audit)
	}
}

// TestSnapshotRestore snapshots the state, restarts a single node and
// checks it recovers it.
func TestSnapshotRestore(t *testing.T) {
	ctx := context.Background()
	dir, addr := t.TempDir(), freeAddr(t)
	n := open(t, "solo", dir, addr, true)
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	leaderOf(t, []*Node{n})
	create := cmd(control.CmdCreate, 0)
	create.Config = &control.MigrationConfig{RequireApproval: true}
	for _, c := range []control.Command{create, cmd(control.CmdStart, 0), cmd(control.CmdApprove, control.StepDeployB)} {
		if err := n.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Snapshot(); err != nil {
		t.Fatal(err)
	}
	want := n.State()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = open(t, "solo", dir, addr, true)
	defer n.Close()
	leaderOf(t, []*Node{n})
	if err := n.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := n.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored state differs:\n got %+v\nwant %+v", got.Migrations["m1"], want.Migrations["m1"])
	}
}

// blockingRunner is a step runner whose Run for one step blocks until
// released, so the test can kill the leader in the middle of that step.
type blockingRunner struct {
	block   control.Step
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingRunner) Run(ctx context.Context, m *control.Migration) error {
	if m.Step == b.block {
		b.once.Do(func() { close(b.entered) })
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (b *blockingRunner) Verify(context.Context, *control.Migration) error { return nil }
func (b *blockingRunner) Undo(context.Context, *control.Migration) error   { return nil }

// slowFleet acknowledges flips only after a delay the first time, so the
// leader can be killed with the barrier open.
type slowFleet struct {
	mu      sync.Mutex
	entered chan struct{}
	once    sync.Once
	calls   int
}

func (f *slowFleet) Live(context.Context) ([]string, error) { return []string{"px1", "px2"}, nil }

func (f *slowFleet) Flip(ctx context.Context, _ string, _ int64, _ ensemble.Name, proxies []string) ([]string, error) {
	f.mu.Lock()
	f.calls++
	first := f.calls == 1
	f.mu.Unlock()
	if first {
		f.once.Do(func() { close(f.entered) })
		<-ctx.Done() // the first leader dies waiting
		return nil, ctx.Err()
	}
	return proxies, nil
}

// TestMigrationCompletesAcrossLeaderKills runs executors on all three
// nodes, kills the leader while phase 2 is running and again while the
// flip barrier is open, and checks the migration completes.
func TestMigrationCompletesAcrossLeaderKills(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes, dirs, addrs := cluster(t)
	runner := &blockingRunner{block: control.StepMastersOnB, entered: make(chan struct{}), release: make(chan struct{})}
	fl := &slowFleet{entered: make(chan struct{})}
	stops := make([]context.CancelFunc, len(nodes))
	var wg sync.WaitGroup
	startExecutor := func(i int) {
		steps := map[control.Step]control.StepRunner{}
		for s := control.StepDeployB; s <= control.StepRemoveA; s++ {
			steps[s] = runner
		}
		ectx, stop := context.WithCancel(ctx)
		stops[i] = stop
		e := &control.Executor{P: nodes[i], Steps: steps, Fleet: fl, Interval: 10 * time.Millisecond, FlipTimeout: 2 * time.Second, Name: nodes[i].ID()}
		wg.Add(1)
		go func() { defer wg.Done(); _ = e.Run(ectx) }()
	}
	for i := range nodes {
		startExecutor(i)
	}
	defer func() {
		cancel()
		wg.Wait()
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	// kill stops the leader and its executor; it returns the node's index
	// so the test can restart it from its files.
	kill := func() int {
		l := leaderOf(t, nodes)
		for i, n := range nodes {
			if n == l {
				stops[i]()
				_ = n.Close()
				nodes[i] = nil
				return i
			}
		}
		return -1
	}
	apply := func(c control.Command) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := leaderOf(t, nodes).Apply(ctx, c)
			if err == nil {
				return
			}
			if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
				t.Fatalf("%s: %v", c.Kind, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor := func(step control.Step, status control.Status) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			if m := leaderOf(t, nodes).State().Migrations["m1"]; m != nil && m.Step == step && m.Status == status {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("migration never reached %s %s: %+v", step, status, leaderOf(t, nodes).State().Migrations["m1"])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	create := cmd(control.CmdCreate, 0)
	create.Config = &control.MigrationConfig{}
	apply(create)
	apply(cmd(control.CmdStart, 0))
	waitFor(control.StepDeployB, control.StatusSucceeded)
	apply(cmd(control.CmdAdvance, control.StepFlip))
	<-fl.entered // the barrier is open on the first leader
	first := kill()
	waitFor(control.StepFlip, control.StatusSucceeded)
	// The first victim comes back from its files (two of three nodes are
	// needed for a quorum after the second kill).
	nodes[first] = open(t, fmt.Sprintf("c%d", first+1), dirs[first], addrs[first], false)
	startExecutor(first)
	apply(cmd(control.CmdAdvance, control.StepMastersOnB))
	<-runner.entered // phase 2 is running on the second leader
	kill()
	close(runner.release)
	waitFor(control.StepMastersOnB, control.StatusSucceeded)
	for s := control.StepMastersOffA; s <= control.StepRemoveA; s++ {
		apply(cmd(control.CmdAdvance, s))
		want := control.StatusSucceeded
		if s == control.StepRemoveA {
			waitFor(control.StepDone, control.StatusCompleted)
			break
		}
		waitFor(s, want)
	}
	m := leaderOf(t, nodes).State().Migrations["m1"]
	if m.Primary != "B" || !m.Flip.Done || len(m.Flip.Acked) != 2 {
		t.Fatalf("final migration: %+v flip %+v", m, m.Flip)
	}
}
