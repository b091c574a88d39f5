package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
)

// barrierFleet is a BarrierFleet and Fencer test double: it records every
// call in order, in one log shared with the fences; proxies in silent
// never answer.
type barrierFleet struct {
	fleet
	log      []string
	fenceErr error
	// lapse counts, per proxy, the raises its marker makes fail (its hold
	// ran out first and it resumed): each hold arms a new marker.
	lapse map[string]int
	holds int // markers armed
	// refuseHold and refuseSwap count, per proxy, the holds (swaps) it
	// answers but does not do (a 503: its drain did not finish within
	// its pause budget); -1: every one.
	refuseHold, refuseSwap map[string]int
}

// refusedErr is the Refusals a fleet returns for proxies that answered
// but did not do the step.
type refusedErr map[string]string

func (r refusedErr) Error() string              { return "refused: " + describeRefusals(r) }
func (r refusedErr) Refused() map[string]string { return r }

// refusing splits proxies into those that do the step and those that
// answer but refuse it (counted down in n).
func (b *barrierFleet) refusing(proxies []string, n map[string]int, why string) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ok []string
	refused := refusedErr{}
	for _, p := range proxies {
		if c := n[p]; c != 0 {
			if c > 0 {
				n[p]--
			}
			refused[p] = why
			continue
		}
		ok = append(ok, p)
	}
	if len(refused) == 0 {
		return ok, nil
	}
	return ok, refused
}

func (b *barrierFleet) note(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log = append(b.log, s)
}

func (b *barrierFleet) answer(ctx context.Context, proxies []string) []string {
	var out []string
	for _, p := range proxies {
		if !b.silent[p] {
			out = append(out, p)
		}
	}
	if len(out) < len(proxies) {
		<-ctx.Done()
	}
	return out
}

func (b *barrierFleet) Hold(ctx context.Context, _ string, epoch int64, primary ensemble.Name, proxies []string) ([]string, time.Duration, map[string]fence.Marker, error) {
	b.note(fmt.Sprintf("hold %d %s %v", epoch, primary, proxies))
	held, err := b.refusing(b.answer(ctx, proxies), b.refuseHold, "503: hold: drain: session 0x1 has requests in flight: context deadline exceeded (nothing held)")
	markers := map[string]fence.Marker{}
	b.mu.Lock()
	for _, p := range held {
		b.holds++
		markers[p] = fence.Marker{Path: p, Version: int32(b.holds)}
	}
	b.mu.Unlock()
	return held, time.Minute, markers, err
}

func (b *barrierFleet) Swap(ctx context.Context, _ string, epoch int64, primary ensemble.Name, proxies []string) ([]string, error) {
	b.note(fmt.Sprintf("swap %d %s %v", epoch, primary, proxies))
	return b.refusing(b.answer(ctx, proxies), b.refuseSwap, "503: swap: read versions: context deadline exceeded")
}

func (b *barrierFleet) Release(_ context.Context, _ string, epoch int64, proxies []string) {
	b.note(fmt.Sprintf("release %d %v", epoch, proxies))
}

func (b *barrierFleet) Fence(_ context.Context, _ *Migration, epoch int64, primary ensemble.Name, markers map[string]fence.Marker) ([]string, error) {
	b.mu.Lock()
	var lapsed []string
	for p := range markers {
		if b.lapse[p] > 0 {
			b.lapse[p]--
			lapsed = append(lapsed, p)
		}
	}
	b.mu.Unlock()
	slices.Sort(lapsed)
	if len(lapsed) > 0 {
		b.note(fmt.Sprintf("fence %d %s refused: %v resumed", epoch, primary, lapsed))
		return lapsed, nil
	}
	if markers == nil {
		b.note(fmt.Sprintf("fence %d %s unconditional", epoch, primary))
	} else {
		b.note(fmt.Sprintf("fence %d %s", epoch, primary))
	}
	return nil, b.fenceErr
}

func (b *barrierFleet) calls() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.log, "; ")
}

func newBarrierExecutor(t *testing.T, b *barrierFleet, g FlipGuard) (*Executor, *localProposer) {
	p := &localProposer{s: NewState()}
	rec := &recorder{failRuns: map[Step]int{}}
	steps := map[Step]StepRunner{}
	for s := StepDeployB; s <= StepRemoveA; s++ {
		if s != StepFlip {
			steps[s] = stepRunner{s, rec}
		}
	}
	e := &Executor{P: p, Steps: steps, Fleet: b, Fencer: b, Guard: g, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e, p
}

// TestBarrierHoldsAllThenFencesThenSwapsAll: every proxy is held before
// the fences are raised, every swap comes after the fences, the releases
// last; a proxy that does not answer the hold is fenced and never asked
// to swap; the commit is recorded before the fences.
func TestBarrierHoldsAllThenFencesThenSwapsAll(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2", "dead"}, silent: map[string]bool{"dead": true}}}
	g := &guard{}
	_, p := newBarrierExecutor(t, b, g)
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" || !m.Flip.Done || !m.Flip.Committed || !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || !slices.Equal(m.Flip.Fenced, []string{"dead"}) {
		t.Fatalf("flip: %+v %+v", m, m.Flip)
	}
	want := "hold 1 B [dead p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [dead p1 p2]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
	if g.checks[len(g.checks)-1] != "A->B" || len(g.checks) != 2 {
		t.Fatalf("guard checks %v: want one before the barrier and one while every proxy holds", g.checks)
	}
	var kinds []string
	for _, a := range p.State().Audit {
		if strings.HasPrefix(a.Action, "flip-") && a.Result == "ok" {
			kinds = append(kinds, a.Action)
		}
	}
	if got := strings.Join(kinds, " "); got != "flip-begin flip-fence flip-commit flip-ack flip-ack flip-done" {
		t.Fatalf("recorded: %s", got)
	}
}

// TestBarrierAbortsBeforeTheFence: the guard fails while the proxies hold:
// every hold is released, nothing is fenced or swapped, the primary stays
// A and the step fails with the reason.
func TestBarrierAbortsBeforeTheFence(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	g := &guard{}
	g.set(errors.New("digests differ on /mesos"), 2)
	_, p := newBarrierExecutor(t, b, g)
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusFailed)
	if m.Primary != "A" || m.Flip != nil || !strings.Contains(m.LastError, "digests differ on /mesos") {
		t.Fatalf("aborted flip left %+v", m)
	}
	if got, want := b.calls(), "hold 1 B [p1 p2]; release 1 [p1 p2]"; got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
}

// TestNewLeaderFinishesACommittedBarrier: the leader recorded the commit
// and died before raising the fences. The next leader (a new executor on
// the replicated state) does not abort, even with the guard failing now:
// it holds the proxies again (their holds may have run out meanwhile;
// the hold tells their markers), raises the fences, swaps and completes.
// A commit cannot be aborted.
func TestNewLeaderFinishesACommittedBarrier(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	p := &localProposer{s: NewState()}
	if err := op(p, CmdCreate, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Command{
		{Kind: CmdStart}, {Kind: CmdStepSucceeded, Step: StepDeployB}, {Kind: CmdAdvance, Step: StepFlip},
		{Kind: CmdFlipBegin, Epoch: 1, Proxies: []string{"p1", "p2"}, Step: StepFlip}, {Kind: CmdFlipCommit, Epoch: 1},
	} {
		c.Migration, c.By, c.Time = "m", "old-leader", time.Now().UTC()
		if c.Step == 0 {
			c.Step = p.State().Migrations["m"].Step
		}
		if err := p.Apply(context.Background(), c); err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
	}
	if err := p.Apply(context.Background(), Command{Kind: CmdFlipAbort, Migration: "m", Epoch: 1, By: "t", Time: time.Now().UTC()}); err == nil {
		t.Fatal("a committed flip was aborted")
	}
	g := &guard{bad: errors.New("the replicator is not running on the leader")}
	e := &Executor{P: p, Fleet: b, Fencer: b, Guard: g, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "new-leader"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" || !m.Flip.Done {
		t.Fatalf("after the new leader: %+v", m)
	}
	if got, want := b.calls(), "hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [p1 p2]"; got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
}

// TestBarrierHoldsAgainAProxyWhoseHoldRanOut: a proxy resumed its
// clients before the fence was raised (its marker changed): the raise
// fails, the proxy is held again and the raise retried, so its clients
// never meet a raised fence with writes in hand. One that keeps resuming
// first gets the unconditional raise at the last try: the flip is
// committed and goes forward.
func TestBarrierHoldsAgainAProxyWhoseHoldRanOut(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}, lapse: map[string]int{"p2": 1}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" || !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || len(m.Flip.Fenced) != 0 {
		t.Fatalf("flip: %+v %+v", m, m.Flip)
	}
	want := "hold 1 B [p1 p2]; fence 1 B refused: [p2] resumed; hold 1 B [p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [p1 p2]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}

	b2 := &barrierFleet{fleet: fleet{proxies: []string{"p1"}}, lapse: map[string]int{"p1": 100}}
	_, p2 := newBarrierExecutor(t, b2, &guard{})
	runTo(t, p2, StepDeployB)
	if err := op(p2, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, p2, StepFlip, StatusSucceeded)
	want = "hold 1 B [p1]; fence 1 B refused: [p1] resumed; hold 1 B [p1]; fence 1 B refused: [p1] resumed; hold 1 B [p1]; fence 1 B refused: [p1] resumed; hold 1 B [p1]; fence 1 B unconditional; swap 1 B [p1]; release 1 [p1]"
	if got := b2.calls(); got != want {
		t.Fatalf("a proxy that always resumes first:\n got %s\nwant %s", got, want)
	}
}

// TestReverseFlipUsesTheBarrier: a rollback across the flip holds every
// proxy, raises the fences to A under the next epoch, swaps, releases.
func TestReverseFlipUsesTheBarrier(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1"}}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepFlip)
	if err := op(p, CmdRollback, StepDeployB); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.State().Migrations["m"].Primary != "A" {
		if time.Now().After(deadline) {
			t.Fatalf("rollback did not flip back: %+v", p.State().Migrations["m"])
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := "hold 1 B [p1]; fence 1 B; swap 1 B [p1]; release 1 [p1]; hold 2 A [p1]; fence 2 A; swap 2 A [p1]; release 2 [p1]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
}

// TestBarrierRetriesAGuardThatRanOutOfTime: the guard inside the hold
// could not finish within the proxies' budget (a read of a loaded
// ensemble timed out): that is no finding, so the holds are released and
// the barrier holds again at the same epoch, and the flip completes. A
// guard that keeps running out of time aborts after maxHoldRetries.
func TestBarrierRetriesAGuardThatRanOutOfTime(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	g := &guard{}
	g.set(fmt.Errorf("read /mesos on A: %w", context.DeadlineExceeded), 2)
	_, p := newBarrierExecutor(t, b, g)
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" {
		t.Fatalf("after the retried barrier: %+v", m)
	}
	if got, want := b.calls(), "hold 1 B [p1 p2]; release 1 [p1 p2]; hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [p1 p2]"; got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}

	b2 := &barrierFleet{fleet: fleet{proxies: []string{"p1"}}}
	_, p2 := newBarrierExecutor(t, b2, &slowGuard{})
	runTo(t, p2, StepDeployB)
	if err := op(p2, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m = waitStatus(t, p2, StepFlip, StatusFailed)
	if m.Primary != "A" || !strings.Contains(m.LastError, "deadline exceeded") {
		t.Fatalf("a guard that never finishes in time: %+v", m)
	}
	if n := strings.Count(b2.calls(), "hold 1"); n != maxHoldRetries+1 {
		t.Fatalf("%d holds, want %d: %s", n, maxHoldRetries+1, b2.calls())
	}
}

// slowGuard passes the check before the barrier and runs out of time in
// every one inside it.
type slowGuard struct {
	mu sync.Mutex
	n  int
}

func (g *slowGuard) FlipReady(context.Context, *Migration, ensemble.Name, ensemble.Name) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n++; g.n == 1 {
		return nil
	}
	return fmt.Errorf("read /mesos on A: %w", context.DeadlineExceeded)
}

// TestBarrierHoldsAgainAProxyThatCouldNotHold: a proxy that answers the
// hold 503 (a request of its clients stayed in flight past its pause
// budget) is alive: every hold is released and the barrier holds them all
// again at the same epoch; the flip ends with it swapped and unfenced. A
// proxy that does not answer at all is still fenced. Before, the 503 was
// taken for silence: the proxy was fenced with its clients on the old
// primary, whose fence then refused their writes.
func TestBarrierHoldsAgainAProxyThatCouldNotHold(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"dead", "p1", "p2"}, silent: map[string]bool{"dead": true}},
		refuseHold: map[string]int{"p2": 1}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" || !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || !slices.Equal(m.Flip.Fenced, []string{"dead"}) {
		t.Fatalf("flip: %+v %+v", m, m.Flip)
	}
	want := "hold 1 B [dead p1 p2]; release 1 [p1 p2]; hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [dead p1 p2]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
}

// TestBarrierAbortsWhenALiveProxyNeverHolds: a proxy that answers every
// hold 503 is asked maxRefusedRetries more times, then the flip is
// aborted before any fence is raised (its clients keep writing to A),
// with the proxy and its answer named and the remediation.
func TestBarrierAbortsWhenALiveProxyNeverHolds(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}, refuseHold: map[string]int{"p2": -1}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusFailed)
	if m.Primary != "A" || m.Flip != nil {
		t.Fatalf("after a proxy that never holds: %+v", m)
	}
	for _, want := range []string{ErrProxyCouldNotHold.Error(), "p2 (503: hold: drain:", "no fence was raised", "stop that proxy"} {
		if !strings.Contains(m.LastError, want) {
			t.Errorf("the error does not say %q: %s", want, m.LastError)
		}
	}
	calls := b.calls()
	if strings.Contains(calls, "fence") || strings.Contains(calls, "swap") {
		t.Fatalf("a fence was raised or a proxy swapped over a live proxy that could not hold: %s", calls)
	}
	if n := strings.Count(calls, "hold 1 B [p1 p2]"); n != maxRefusedRetries+1 {
		t.Fatalf("%d holds, want %d: %s", n, maxRefusedRetries+1, calls)
	}
	for _, a := range p.State().Audit {
		if a.Action == string(CmdFlipFence) {
			t.Fatalf("a proxy was recorded fenced: %+v", a)
		}
	}
}

// TestBarrierAsksAgainAProxyThatCouldNotSwap: after the commit (the fence
// is raised) a proxy that answers the swap 503 still holds: it is asked
// again rather than recorded fenced, and the flip ends with it swapped.
func TestBarrierAsksAgainAProxyThatCouldNotSwap(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}, refuseSwap: map[string]int{"p2": 1}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusSucceeded)
	if m.Primary != "B" || !slices.Equal(m.Flip.Acked, []string{"p1", "p2"}) || len(m.Flip.Fenced) != 0 {
		t.Fatalf("flip: %+v %+v", m, m.Flip)
	}
	want := "hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; swap 1 B [p2]; release 1 [p1 p2]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}
}

// TestReverseBarrierHoldsAgainAProxyThatCouldNotHold: the rollback's
// reverse flip follows the forward barrier's rule. A proxy that answers
// its hold 503 is held again at the same epoch before any fence is
// raised, and the rollback completes with it swapped. One that answers
// 503 every time holds the rollback up (primary stays B, no fence
// raised, the reason named) until it can hold.
func TestReverseBarrierHoldsAgainAProxyThatCouldNotHold(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	_, p := newBarrierExecutor(t, b, &guard{})
	runTo(t, p, StepFlip)
	b.mu.Lock()
	b.refuseHold = map[string]int{"p1": 1}
	b.mu.Unlock()
	if err := op(p, CmdRollback, StepDeployB); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepDeployB, StatusSucceeded)
	if m.Primary != "A" || m.Epoch != 2 {
		t.Fatalf("after the rollback: %+v", m)
	}
	want := "hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [p1 p2]; " +
		"hold 2 A [p1 p2]; release 2 [p1 p2]; hold 2 A [p1 p2]; fence 2 A; swap 2 A [p1 p2]; release 2 [p1 p2]"
	if got := b.calls(); got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}

	b2 := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	_, p2 := newBarrierExecutor(t, b2, &guard{})
	runTo(t, p2, StepFlip)
	b2.mu.Lock()
	b2.refuseHold = map[string]int{"p2": -1}
	b2.mu.Unlock()
	if err := op(p2, CmdRollback, StepDeployB); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m = p2.State().Migrations["m"]; !strings.Contains(m.LastError, ErrProxyCouldNotHold.Error()); m = p2.State().Migrations["m"] {
		if time.Now().After(deadline) {
			t.Fatalf("the rollback is not held up by the proxy that cannot hold: %+v", m)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if m.Status != StatusRollingBack || m.Primary != "B" || !strings.Contains(m.LastError, "reverse flip refused, primary stays B") || !strings.Contains(m.LastError, "p2 (503") {
		t.Fatalf("held-up rollback: %+v", m)
	}
	if calls := b2.calls(); strings.Contains(calls, "fence 2") || strings.Contains(calls, "swap 2") {
		t.Fatalf("a fence was raised over a live proxy that could not hold: %s", calls)
	}
	// Once it can hold, the rollback goes on by itself.
	b2.mu.Lock()
	b2.refuseHold = nil
	b2.mu.Unlock()
	m = waitStatus(t, p2, StepDeployB, StatusSucceeded)
	if m.Primary != "A" {
		t.Fatalf("after the rollback: %+v", m)
	}
	if calls := b2.calls(); !strings.HasSuffix(calls, "hold 2 A [p1 p2]; fence 2 A; swap 2 A [p1 p2]; release 2 [p1 p2]") {
		t.Fatalf("barrier calls: %s", calls)
	}
}
