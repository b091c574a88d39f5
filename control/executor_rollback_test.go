package control

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// undoLog is a StepRunner double for every step: it records each undo and
// runs hook (if set) inside it.
type undoLog struct {
	mu    sync.Mutex
	undos []string
	hook  func(ctx context.Context, s Step) error
}

type undoStep struct {
	s Step
	l *undoLog
}

func (u undoStep) Run(context.Context, *Migration) error    { return nil }
func (u undoStep) Verify(context.Context, *Migration) error { return nil }
func (u undoStep) Undo(ctx context.Context, _ *Migration) error {
	u.l.mu.Lock()
	u.l.undos = append(u.l.undos, u.s.String())
	hook := u.l.hook
	u.l.mu.Unlock()
	if hook != nil {
		return hook(ctx, u.s)
	}
	return nil
}

func (l *undoLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.undos)
}

// leaderSwitch is a localProposer whose leadership a test takes away.
type leaderSwitch struct {
	*localProposer
	leads atomic.Bool
}

func (p *leaderSwitch) IsLeader() bool { return p.leads.Load() }

func startExecutor(p Proposer, l *undoLog, f ProxyFleet) (stop func()) {
	steps := map[Step]StepRunner{}
	for s := StepDeployB; s <= StepRemoveA; s++ {
		if s != StepFlip {
			steps[s] = undoStep{s, l}
		}
	}
	e := &Executor{P: p, Steps: steps, Fleet: f, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// TestRollbackResumesAfterTheLeaderDies: a rollback from phase 5 to phase
// 1 whose leader dies in the undo of phase 3 (after undoing 5 and 4). The
// next leader, from the same state, undoes 3 again (it was not finished),
// then 2 and the flip, and never undoes 5 or 4 again: each undo done is in
// the replicated state. Before, the new leader started over from phase 5.
func TestRollbackResumesAfterTheLeaderDies(t *testing.T) {
	f := &fleet{proxies: []string{"p1"}}
	_, p, _ := newExecutor(t, f)
	runTo(t, p, StepDrainAgentsA)

	// The rollback runs on a copy of the state, under leaders of its own.
	p2 := &localProposer{s: p.State()}
	first := &undoLog{}
	ctx1, kill := context.WithCancel(context.Background())
	first.hook = func(_ context.Context, s Step) error {
		if s == StepMastersOffA {
			kill() // SIGKILL in the middle of the undo of phase 3
			return context.Canceled
		}
		return nil
	}
	steps := map[Step]StepRunner{}
	for s := StepDeployB; s <= StepRemoveA; s++ {
		if s != StepFlip {
			steps[s] = undoStep{s, first}
		}
	}
	e1 := &Executor{P: p2, Steps: steps, Fleet: f, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "c1"}
	done := make(chan struct{})
	go func() { _ = e1.Run(ctx1); close(done) }()
	if err := op(p2, CmdRollback, StepDeployB); err != nil {
		t.Fatal(err)
	}
	<-done
	m := p2.State().Migrations["m"]
	if m.Status != StatusRollingBack || m.Undone != StepAgentsOnB {
		t.Fatalf("after the first leader died: %s, undone down to %s; want rolling back, undone down to %s", m.Status, m.Undone, StepAgentsOnB)
	}

	second := &undoLog{}
	stop := startExecutor(p2, second, f)
	defer stop()
	m = waitStatus(t, p2, StepDeployB, StatusSucceeded)
	if got, want := first.list(), []string{"5-drain-agents-a", "4-agents-on-b", "3-masters-off-a"}; !slices.Equal(got, want) {
		t.Fatalf("the first leader undid %v; want %v", got, want)
	}
	if got, want := second.list(), []string{"3-masters-off-a", "2-masters-on-b"}; !slices.Equal(got, want) {
		t.Fatalf("the next leader undid %v; want %v (the undo in progress, then the rest; never a finished one again)", got, want)
	}
	if m.Primary != "A" || m.Epoch != 2 || m.Undone != 0 {
		t.Fatalf("after the rollback: primary %s epoch %d undone %s; want A, 2, none", m.Primary, m.Epoch, m.Undone)
	}
	var undone []string
	for _, a := range p2.State().Audit {
		if a.Action == string(CmdStepUndone) {
			undone = append(undone, a.Detail+" "+a.Result)
		}
	}
	want := []string{"step=5-drain-agents-a ok", "step=4-agents-on-b ok", "step=3-masters-off-a ok", "step=2-masters-on-b ok", "step=flip epoch=2 ok"}
	if !slices.Equal(undone, want) {
		t.Fatalf("step-undone entries %v; want %v", undone, want)
	}
}

// TestADeposedLeaderStopsItsUndo: a node that loses leadership in the
// middle of an undo stops it (its pass's context ends), so it does not
// go on moving processes beside the new leader.
func TestADeposedLeaderStopsItsUndo(t *testing.T) {
	f := &fleet{proxies: []string{"p1"}}
	_, lp, _ := newExecutor(t, f)
	runTo(t, lp, StepMastersOffA)
	p := &leaderSwitch{localProposer: &localProposer{s: lp.State()}}
	p.leads.Store(true)
	l := &undoLog{}
	entered, ended := make(chan struct{}), make(chan error, 1)
	var once sync.Once
	l.hook = func(ctx context.Context, s Step) error {
		if s != StepMastersOffA {
			return nil
		}
		once.Do(func() { close(entered) })
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
			return ctx.Err()
		case <-time.After(time.Minute):
			ended <- nil
			return nil
		}
	}
	stop := startExecutor(p, l, f)
	defer stop()
	if err := op(p.localProposer, CmdRollback, StepMastersOnB); err != nil {
		t.Fatal(err)
	}
	<-entered
	p.leads.Store(false)
	if err := <-ended; err == nil {
		t.Fatal("the undo went on after the node lost leadership")
	}
	if m := p.State().Migrations["m"]; m.Undone != 0 || m.Status != StatusRollingBack {
		t.Fatalf("a deposed leader recorded its undo: %+v", m)
	}
}
