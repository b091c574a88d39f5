package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// localProposer applies commands to one in-memory State, as a single-node
// leader would.
type localProposer struct {
	mu sync.Mutex
	s  *State
}

func (p *localProposer) Apply(_ context.Context, c Command) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s.Apply(c, uint64(len(p.s.Audit)+1))
}

func (p *localProposer) State() *State {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p.s)
	st := NewState()
	_ = json.Unmarshal(b, st)
	return st
}

func (p *localProposer) IsLeader() bool { return true }

// recorder is a StepRunner test double that records what it was asked.
type recorder struct {
	mu       sync.Mutex
	calls    []string
	failRuns map[Step]int // fail the first N runs of a step
}

func (r *recorder) note(what string, m *Migration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("%s %s", what, m.Step))
}

func (r *recorder) Run(_ context.Context, m *Migration) error {
	r.note("run", m)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failRuns[m.Step] > 0 {
		r.failRuns[m.Step]--
		return errors.New("injected failure")
	}
	return nil
}

func (r *recorder) Verify(_ context.Context, m *Migration) error { r.note("verify", m); return nil }

func (r *recorder) Undo(_ context.Context, m *Migration) error { return nil }

func (r *recorder) log() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// stepRunner binds the recorder to one step, so an undo names the step
// undone (Undo receives the migration, whose Step is where the rollback
// started).
type stepRunner struct {
	step Step
	rec  *recorder
}

func (s stepRunner) Run(ctx context.Context, m *Migration) error    { return s.rec.Run(ctx, m) }
func (s stepRunner) Verify(ctx context.Context, m *Migration) error { return s.rec.Verify(ctx, m) }
func (s stepRunner) Undo(_ context.Context, m *Migration) error {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	s.rec.calls = append(s.rec.calls, "undo "+s.step.String())
	return nil
}

// fleet is a ProxyFleet test double: proxies in silent never acknowledge;
// refuse counts, per proxy, the flips it answers 503 (-1: every one).
type fleet struct {
	mu      sync.Mutex
	proxies []string
	silent  map[string]bool
	refuse  map[string]int
	flips   []string
}

func (f *fleet) Live(context.Context) ([]string, error) { return f.proxies, nil }

func (f *fleet) Flip(ctx context.Context, _ string, epoch int64, primary ensemble.Name, proxies []string) ([]string, error) {
	f.mu.Lock()
	f.flips = append(f.flips, fmt.Sprintf("epoch %d to %s: %v", epoch, primary, proxies))
	f.mu.Unlock()
	var acked []string
	refused := refusedErr{}
	f.mu.Lock()
	for _, p := range proxies {
		switch n := f.refuse[p]; {
		case f.silent[p]:
		case n != 0:
			if n > 0 {
				f.refuse[p]--
			}
			refused[p] = "503: drain: session 0x1 has requests in flight: context deadline exceeded (nothing swapped)"
		default:
			acked = append(acked, p)
		}
	}
	f.mu.Unlock()
	if len(acked)+len(refused) < len(proxies) {
		<-ctx.Done() // the silent ones never answer
	}
	if len(refused) > 0 {
		return acked, refused
	}
	return acked, nil
}

func newExecutor(t *testing.T, f ProxyFleet) (*Executor, *localProposer, *recorder) {
	p := &localProposer{s: NewState()}
	rec := &recorder{failRuns: map[Step]int{}}
	steps := map[Step]StepRunner{}
	for s := StepDeployB; s <= StepRemoveA; s++ {
		if s != StepFlip {
			steps[s] = stepRunner{s, rec}
		}
	}
	e := &Executor{P: p, Steps: steps, Fleet: f, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e, p, rec
}

func op(p *localProposer, kind Kind, step Step) error {
	c := Command{Kind: kind, Migration: "m", By: "operator", Time: time.Now().UTC(), Step: step}
	if kind == CmdCreate {
		c.Config = &MigrationConfig{}
	}
	return p.Apply(context.Background(), c)
}

func waitStatus(t *testing.T, p *localProposer, step Step, status Status) *Migration {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := p.State().Migrations["m"]
		if m != nil && m.Step == step && m.Status == status {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("migration is %+v, want step %s %s", m, step, status)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runTo starts a migration and advances it until step last has succeeded.
func runTo(t *testing.T, p *localProposer, last Step) {
	t.Helper()
	if err := op(p, CmdCreate, 0); err != nil {
		t.Fatal(err)
	}
	if err := op(p, CmdStart, 0); err != nil {
		t.Fatal(err)
	}
	for s := StepDeployB; ; s++ {
		want := StatusSucceeded
		if s == StepRemoveA {
			s, want = StepDone, StatusCompleted
		}
		waitStatus(t, p, s, want)
		if s >= last || s == StepDone {
			return
		}
		if err := op(p, CmdAdvance, s+1); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExecutorRunsAWholeMigration(t *testing.T) {
	f := &fleet{proxies: []string{"master1", "agent1"}}
	_, p, rec := newExecutor(t, f)
	runTo(t, p, StepDone)
	m := p.State().Migrations["m"]
	if m.Primary != "B" || m.Epoch != 1 || !m.Flip.Done || len(m.Flip.Acked) != 2 {
		t.Fatalf("after the migration: %+v flip %+v", m, m.Flip)
	}
	var runs []string
	for _, c := range rec.log() {
		if c[:3] == "run" {
			runs = append(runs, c)
		}
	}
	want := []string{"run 1-deploy-b-and-sync", "run 2-masters-on-b", "run 3-masters-off-a", "run 4-agents-on-b", "run 5-drain-agents-a", "run 6-remove-a"}
	if !slices.Equal(runs, want) {
		t.Fatalf("steps run: %v", runs)
	}
}

// TestFlipFencesASilentProxy: a proxy that never acknowledges is fenced
// when the barrier's timeout passes, and the flip completes without it.
func TestFlipFencesASilentProxy(t *testing.T) {
	f := &fleet{proxies: []string{"p1", "p2", "dead"}, silent: map[string]bool{"dead": true}}
	_, p, _ := newExecutor(t, f)
	runTo(t, p, StepFlip)
	m := p.State().Migrations["m"]
	if !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || !slices.Equal(m.Flip.Fenced, []string{"dead"}) || m.Primary != "B" {
		t.Fatalf("flip: %+v", m.Flip)
	}
	if !m.Fenced("dead", 0) || m.Fenced("p1", 1) {
		t.Fatal("fencing verdicts wrong")
	}
}

// TestFlipAsksAgainAProxyThatAnsweredButDidNotFlip: a proxy that answers
// the flip 503 (a new leader's repeated request found it still busy) is
// alive: it is asked again at the same epoch, not recorded fenced after
// that one answer; one that refuses every time aborts the flip (every
// proxy back to A) rather than being fenced.
func TestFlipAsksAgainAProxyThatAnsweredButDidNotFlip(t *testing.T) {
	f := &fleet{proxies: []string{"p1", "p2", "dead"}, silent: map[string]bool{"dead": true}, refuse: map[string]int{"p2": 1}}
	_, p, _ := newExecutor(t, f)
	runTo(t, p, StepFlip)
	m := p.State().Migrations["m"]
	if !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || !slices.Equal(m.Flip.Fenced, []string{"dead"}) || m.Primary != "B" || m.Epoch != 1 {
		t.Fatalf("flip: %+v", m.Flip)
	}

	f2 := &fleet{proxies: []string{"p1", "p2"}, refuse: map[string]int{"p2": -1}}
	_, p2, _ := newExecutor(t, f2)
	runTo(t, p2, StepDeployB)
	if err := op(p2, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m = waitStatus(t, p2, StepFlip, StatusFailed)
	if m.Primary != "A" || m.Flip != nil || !strings.Contains(m.LastError, ErrProxyCouldNotHold.Error()) || !strings.Contains(m.LastError, "p2 (503") {
		t.Fatalf("a proxy that never flips: %+v", m)
	}
	for _, a := range p2.State().Audit {
		if a.Action == string(CmdFlipFence) {
			t.Fatalf("a live proxy was recorded fenced: %+v", a)
		}
	}
}

func TestStepFailureIsReportedAndRetried(t *testing.T) {
	f := &fleet{proxies: []string{"p1"}}
	_, p, rec := newExecutor(t, f)
	rec.mu.Lock()
	rec.failRuns[StepDeployB] = 1
	rec.mu.Unlock()
	if err := op(p, CmdCreate, 0); err != nil {
		t.Fatal(err)
	}
	if err := op(p, CmdStart, 0); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepDeployB, StatusFailed)
	if m.LastError == "" {
		t.Fatal("failure not recorded")
	}
	if err := op(p, CmdRetry, 0); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, p, StepDeployB, StatusSucceeded)
}

// TestRollbackFromEveryStep runs to each step, rolls back to the one
// before (and to phase 1), and checks the undos run newest first, the
// reverse flip happens exactly when the rollback crosses the flip, and the
// epoch keeps rising.
func TestRollbackFromEveryStep(t *testing.T) {
	for from := StepFlip; from <= StepDrainAgentsA; from++ {
		for _, to := range []Step{from - 1, StepDeployB} {
			if to >= from {
				continue
			}
			t.Run(fmt.Sprintf("%s_to_%s", from, to), func(t *testing.T) {
				f := &fleet{proxies: []string{"p1"}}
				_, p, rec := newExecutor(t, f)
				runTo(t, p, from)
				before := len(rec.log())
				if err := op(p, CmdRollback, to); err != nil {
					t.Fatal(err)
				}
				m := waitStatus(t, p, to, StatusSucceeded)
				var undos []string
				for _, c := range rec.log()[before:] {
					if c[:4] == "undo" {
						undos = append(undos, c[5:])
					}
				}
				var want []string
				for s := from; s > to; s-- {
					if s != StepFlip {
						want = append(want, s.String())
					}
				}
				if !slices.Equal(undos, want) {
					t.Fatalf("undone %v, want %v", undos, want)
				}
				crossed := to < StepFlip
				f.mu.Lock()
				flips := slices.Clone(f.flips)
				f.mu.Unlock()
				if wantFlips := map[bool]int{true: 2, false: 1}[crossed]; len(flips) != wantFlips {
					t.Fatalf("flips %v, want %d", flips, wantFlips)
				}
				if crossed && (m.Primary != "A" || m.Epoch != 2) {
					t.Fatalf("after a rollback below the flip: primary %s epoch %d", m.Primary, m.Epoch)
				}
				if !crossed && m.Primary != "B" {
					t.Fatalf("primary %s after a rollback above the flip", m.Primary)
				}
				if crossed {
					// Forward again: the next flip's epoch is above the
					// reverse flip's.
					if err := op(p, CmdAdvance, StepFlip); err != nil {
						t.Fatal(err)
					}
					if m := waitStatus(t, p, StepFlip, StatusSucceeded); m.Epoch != 3 || m.Primary != "B" {
						t.Fatalf("flip after rollback: epoch %d primary %s", m.Epoch, m.Primary)
					}
				}
			})
		}
	}
}

// newLeaderProposer is a node just elected leader, as Raft makes one: the
// log holds everything its predecessor committed, but its state machine
// has not applied the last entries yet (they are applied once the new
// term's first entry commits). State is the older state until Barrier.
type newLeaderProposer struct {
	*localProposer
	behind    *State
	caughtUp  atomic.Bool
	afterward atomic.Int32 // State calls after the barrier
}

func (p *newLeaderProposer) State() *State {
	if !p.caughtUp.Load() {
		return p.behind
	}
	p.afterward.Add(1)
	return p.localProposer.State()
}

func (p *newLeaderProposer) Barrier(time.Duration) error {
	p.caughtUp.Store(true)
	return nil
}

// TestNewLeaderActsOnlyOnTheWholeLog: phase 1 succeeded under the old
// leader, which was killed before the new one applied that. The new
// leader's executor must not run the step again from its older state: in
// the control plane that started phase 1's sync on the new leader beside
// the supervisor, which then recorded sync-started without the
// sync-stopped of the old leader's (TestSyncFollowsTheControlLeader failed
// so under load).
func TestNewLeaderActsOnlyOnTheWholeLog(t *testing.T) {
	p := &localProposer{s: NewState()}
	for _, k := range []Kind{CmdCreate, CmdStart} {
		if err := op(p, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	behind := p.State() // phase 1 running
	if err := p.Apply(context.Background(), Command{Kind: CmdStepSucceeded, Migration: "m", By: "executor:old-leader",
		Time: time.Now().UTC(), Step: StepDeployB}); err != nil {
		t.Fatal(err)
	}
	nl := &newLeaderProposer{localProposer: p, behind: behind}
	rec := &recorder{failRuns: map[Step]int{}}
	e := &Executor{P: nl, Steps: map[Step]StepRunner{StepDeployB: stepRunner{StepDeployB, rec}}, Fleet: &fleet{},
		Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "new-leader"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// Until a few passes have read the whole state, or the step ran again.
	deadline := time.Now().Add(10 * time.Second)
	for nl.afterward.Load() < 3 && len(rec.log()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the new leader's executor made no pass")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if calls := rec.log(); len(calls) > 0 {
		t.Fatalf("the new leader re-ran a step its predecessor had finished, from a state older than the log: %v", calls)
	}
}
