package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// memProposer applies commands to one in-memory state, as a single-node
// leader would; two executors sharing it are two successive leaders of
// one replicated state.
type memProposer struct {
	mu sync.Mutex
	s  *control.State
}

func (p *memProposer) Apply(ctx context.Context, c control.Command) error {
	if err := ctx.Err(); err != nil {
		return err // as raftstore: a cancelled Apply replicates nothing
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s.Apply(c, uint64(len(p.s.Audit)+1))
}

func (p *memProposer) State() *control.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p.s)
	st := control.NewState()
	_ = json.Unmarshal(b, st)
	return st
}

func (p *memProposer) IsLeader() bool { return true }

// callLog records the start and stop calls every executor's deployer made.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, s)
	return len(l.calls)
}

func (l *callLog) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls[n:])
}

// dyingDeployer is the deployer of one control leader: it records every
// Start and Stop in log and, once killAt calls of the log are made,
// "dies": it cancels its executor and acts on nothing more, as a SIGKILLed
// control node makes no further call.
type dyingDeployer struct {
	deployer.Deployer
	log    *callLog
	killAt int // 0: never
	kill   context.CancelFunc
	mu     sync.Mutex
	dead   bool
}

var errKilled = errors.New("this control leader was killed")

func (d *dyingDeployer) act(ctx context.Context, verb string, p deployer.Process, f func(context.Context, deployer.Process) error) error {
	d.mu.Lock()
	dead := d.dead
	d.mu.Unlock()
	if dead {
		return errKilled
	}
	err := f(ctx, p)
	if n := d.log.add(verb + " " + p.Name); d.killAt > 0 && n >= d.killAt {
		d.mu.Lock()
		d.dead = true
		d.mu.Unlock()
		d.kill()
	}
	return err
}

func (d *dyingDeployer) Start(ctx context.Context, p deployer.Process) error {
	return d.act(ctx, "start", p, d.Deployer.Start)
}

func (d *dyingDeployer) Stop(ctx context.Context, p deployer.Process) error {
	return d.act(ctx, "stop", p, d.Deployer.Stop)
}

func (d *dyingDeployer) Running(ctx context.Context, p deployer.Process) (bool, error) {
	d.mu.Lock()
	dead := d.dead
	d.mu.Unlock()
	if dead {
		return false, errKilled
	}
	return d.Deployer.Running(ctx, p)
}

// okRunner is phase 1's runner in these tests: the sync is not what they
// are about.
type okRunner struct{}

func (okRunner) Run(context.Context, *control.Migration) error    { return nil }
func (okRunner) Verify(context.Context, *control.Migration) error { return nil }
func (okRunner) Undo(context.Context, *control.Migration) error   { return nil }

// startLeader runs an executor on p whose Mesos phases go through dep; it
// returns a stop function that waits for it.
func startLeader(p *memProposer, name string, dep *dyingDeployer) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	dep.kill = cancel
	steps := map[control.Step]control.StepRunner{control.StepDeployB: okRunner{}}
	for s := control.StepMastersOnB; s <= control.StepRemoveA; s++ {
		steps[s] = &MesosPhase{Step: s, Deployer: dep, Logger: slog.Default().With("leader", name)}
	}
	ex := &control.Executor{P: p, Steps: steps, Fleet: NoProxies{}, Interval: 50 * time.Millisecond, FlipTimeout: time.Second, Name: name}
	done := make(chan struct{})
	go func() { defer close(done); _ = ex.Run(ctx) }()
	return ctx, func() { cancel(); <-done }
}

// waitMigration polls the state until the migration is at step with
// status, failing the test on a failed step.
func waitMigration(t *testing.T, p *memProposer, step control.Step, status control.Status, d time.Duration) *control.Migration {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m := p.State().Migrations["mesos"]
		if m.Step == step && m.Status == status {
			return m
		}
		if m.Status == control.StatusFailed {
			t.Fatalf("%s failed: %s", m.Step, m.LastError)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the migration is at %s %s (last error %q); want %s %s", d, m.Step, m.Status, m.LastError, step, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRollbackResumesWhereTheDeadLeaderStopped: a rollback from phase 3 to
// phase 1 on a real emulated cluster (three masters a side, bin/mesos-sim
// through the local deployer, a real ZooKeeper), its control leader killed
// in the undo of phase 2, after the undo of phase 3 and the first stop of
// a B master. The next leader, from the same replicated state, resumes the
// undo of phase 2: it does not undo phase 3 again (which started a B
// master it had stopped), so every master is started and stopped at most
// once, A's three masters run with one leader, ZooKeeper shows exactly
// them, and no master exited.
func TestRollbackResumesWhereTheDeadLeaderStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and Mesos processes")
	}
	ctx := context.Background()
	e := newMesosEnv(t, 2)
	p := &memProposer{s: control.NewState()}
	cmd := func(kind control.Kind, step control.Step) {
		t.Helper()
		c := control.Command{Kind: kind, Migration: "mesos", By: "operator", Time: time.Now().UTC(), Step: step}
		if kind == control.CmdCreate {
			cfg := e.current().Config
			c.Config = &cfg
		}
		if err := p.Apply(ctx, c); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
	}
	calls := &callLog{}
	first := &dyingDeployer{Deployer: e.dep, log: calls}
	_, stopFirst := startLeader(p, "c1", first)
	defer stopFirst()

	// Forward to phase 3 (no proxies: the flip has no one to ask).
	cmd(control.CmdCreate, 0)
	cmd(control.CmdStart, 0)
	waitMigration(t, p, control.StepDeployB, control.StatusSucceeded, 30*time.Second)
	for _, s := range []control.Step{control.StepFlip, control.StepMastersOnB, control.StepMastersOffA} {
		cmd(control.CmdAdvance, s)
		waitMigration(t, p, s, control.StatusSucceeded, 3*time.Minute)
	}
	if got := e.runningNames(t, e.cl.allMasters()); got != names(e.cl.masters[1]) {
		t.Fatalf("after phase 3 running masters: %s; want B's", got)
	}

	// A stopped master's znodes left on A, where its proxy's shadow
	// session could not be closed (A's leader was down): the reverse flip
	// must wait until they go, or every master would see them once A is
	// the primary again.
	closedAt := leaveStaleMaster(t, e, e.cl.masters[1][1])

	// The rollback; the leader dies after its third start or stop: the
	// undo of phase 3 is one stop and one start, so the third is the undo
	// of phase 2's first stop of a B master.
	from := len(calls.since(0))
	first.mu.Lock()
	first.killAt = from + 3
	first.mu.Unlock()
	cmd(control.CmdRollback, control.StepDeployB)
	eventuallyT(t, 3*time.Minute, "the first leader killed in the undo of phase 2", func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return first.dead
	})
	stopFirst()
	if m := p.State().Migrations["mesos"]; m.Status != control.StatusRollingBack {
		t.Fatalf("after the first leader died the migration is %s at %s; want still rolling back", m.Status, m.Step)
	}
	t.Logf("the first leader's calls: %v", calls.since(from))

	// The next leader, from the same state.
	_, stopSecond := startLeader(p, "c2", &dyingDeployer{Deployer: e.dep, log: calls})
	defer stopSecond()
	m := waitMigration(t, p, control.StepDeployB, control.StatusSucceeded, 3*time.Minute)
	stopSecond()
	got := calls.since(from)
	t.Logf("the rollback's calls: %v", got)
	if m.Primary != "A" {
		t.Fatalf("after the rollback the primary is %s; want A", m.Primary)
	}

	// Every master started or stopped once: A's started, B's stopped.
	count := map[string]int{}
	for _, c := range got {
		count[c]++
	}
	var want []string
	for _, p := range e.cl.masters[0] {
		want = append(want, "start "+p.Name)
	}
	for _, p := range e.cl.masters[1] {
		want = append(want, "stop "+p.Name)
	}
	for c, n := range count {
		if n > 1 || !slices.Contains(want, c) {
			t.Errorf("%q %d time(s) in the rollback (calls %v); want each of %v once", c, n, got, want)
		}
	}
	for _, c := range want {
		if count[c] == 0 {
			t.Errorf("the rollback never made %q (calls %v)", c, got)
		}
	}
	if got := e.runningNames(t, e.cl.allMasters()); got != names(e.cl.masters[0]) {
		t.Fatalf("after the rollback running masters: %s; want A's %s", got, names(e.cl.masters[0]))
	}
	if l, ok := e.cl.leaderProcess(ctx); !ok || l.Side != "A" {
		t.Fatalf("after the rollback the leader is %+v (found %v); want one A master", l, ok)
	}
	e.cl.primary = e.cfg.Migration.TargetZK // where the masters' znodes are (they use B directly)
	if err := e.cl.zkAgrees(ctx, 3); err != nil {
		t.Fatalf("ZooKeeper after the rollback: %v", err)
	}
	var undone2 time.Time
	for _, a := range p.State().Audit {
		if a.Action == string(control.CmdStepUndone) && a.Detail == "step="+control.StepMastersOnB.String() && a.Result == "ok" {
			undone2 = a.Time
		}
	}
	if closed := <-closedAt; undone2.IsZero() || undone2.Before(closed) {
		t.Fatalf("the undo of phase 2 was recorded done at %v, before A lost the stopped master's znodes (%v): the reverse flip "+
			"would have shown them to every master", undone2, closed)
	}
	if exits := masterExits(e); len(exits) > 0 {
		t.Fatalf("masters exited during the rollback:\n%s", strings.Join(exits, "\n"))
	}
}

// leaveStaleMaster creates on ensemble A, in a session of its own, the
// json.info_ and log replica of the stopped master p, as a shadow session
// a proxy could not close leaves them. Once A's masters all run, and two
// seconds more (the undo of phase 2 would be recorded by then without its
// check of A), it closes the session; the channel gives the moment just
// before, when the znodes still existed.
func leaveStaleMaster(t *testing.T, e *mesosEnv, p deployer.Process) <-chan time.Time {
	t.Helper()
	ctx := context.Background()
	zc, err := zkclient.Dial(ctx, strings.Split(e.cfg.Migration.SourceZK, ","), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("%s:%d", p.Host, p.Port)
	for _, n := range []struct {
		path  string
		data  string
		flags int32
	}{
		{"/mesos", "", jute.FlagPersistent},
		{"/mesos/log_replicas", "", jute.FlagPersistent},
		{"/mesos/json.info_", `{"pid":"master@` + addr + `"}`, jute.FlagEphemeralSequential},
		{"/mesos/log_replicas/", "log-replica(1)@" + addr, jute.FlagEphemeralSequential},
	} {
		if _, err := zc.Create(ctx, n.path, []byte(n.data), zkclient.OpenACL, n.flags); err != nil && jute.CodeOf(err) != jute.CodeNodeExists {
			t.Fatalf("create %s on A: %v", n.path, err)
		}
	}
	closed := make(chan time.Time, 1)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if run, err := e.cl.running(ctx, e.cl.allMasters()); err == nil && names(run) == names(e.cl.masters[0]) {
				break
			}
			select {
			case <-stop:
				closed <- time.Now()
				zc.Close()
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		select {
		case <-stop:
		case <-time.After(2 * time.Second):
		}
		closed <- time.Now()
		zc.Close()
	}()
	t.Cleanup(func() { close(stop); <-done })
	return closed
}

// masterExits lists the masters whose log shows an exit with status 1
// (the quorum rule, a lost leadership).
func masterExits(e *mesosEnv) []string {
	var out []string
	for _, p := range e.cl.allMasters() {
		b, _ := os.ReadFile(filepath.Join(e.dir, p.Name+".log"))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"exit_code":1`) {
				out = append(out, fmt.Sprintf("%s: %s", p.Name, line))
			}
		}
	}
	return out
}
