package control

import (
	"context"
	"errors"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"strings"
	"sync"
	"testing"
	"time"
)

// guard is a FlipGuard test double: it fails while bad is set, and counts
// its checks so a test can fail one in the middle of a barrier.
type guard struct {
	mu     sync.Mutex
	bad    error
	checks []string
	// failAt, if > 0, makes the failAt-th check (1-based) fail with bad.
	failAt int
}

func (g *guard) FlipReady(_ context.Context, m *Migration, from, to ensemble.Name) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checks = append(g.checks, string(from)+"->"+string(to))
	if g.failAt > 0 {
		if len(g.checks) == g.failAt {
			return g.bad
		}
		return nil
	}
	return g.bad
}

func (g *guard) set(err error, failAt int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bad, g.failAt, g.checks = err, failAt, nil
}

// TestFlipRefusedWhenAPreconditionFails: with the replicator stopped the
// flip does not begin: the step fails with the reason, the primary stays
// A, no barrier opens, and a retry once the condition holds flips.
func TestFlipRefusedWhenAPreconditionFails(t *testing.T) {
	f := &fleet{proxies: []string{"p1"}}
	e, p, _ := newExecutor(t, f)
	g := &guard{bad: errors.New("the replicator is not running on the leader")}
	e.Guard = g
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusFailed)
	if m.Primary != "A" || m.Flip != nil || m.Epoch != 0 || !strings.Contains(m.LastError, "flip refused: the replicator is not running") {
		t.Fatalf("refused flip left %+v", m)
	}
	f.mu.Lock()
	asked := len(f.flips)
	f.mu.Unlock()
	if asked != 0 {
		t.Fatalf("proxies were asked to flip: %v", f.flips)
	}
	g.set(nil, 0)
	if err := op(p, CmdRetry, 0); err != nil {
		t.Fatal(err)
	}
	if m := waitStatus(t, p, StepFlip, StatusSucceeded); m.Primary != "B" || m.Epoch != 1 {
		t.Fatalf("flip after the retry: %+v", m)
	}
}

// TestFlipAbortedWhenAPreconditionFailsMidBarrier: the check before the
// barrier passes, the one after the proxies acknowledged fails (digests
// differ): the flip is aborted, the proxies are sent back to A under the
// next epoch, the primary stays A, and the next flip uses a higher epoch.
func TestFlipAbortedWhenAPreconditionFailsMidBarrier(t *testing.T) {
	f := &fleet{proxies: []string{"p1", "p2"}}
	e, p, _ := newExecutor(t, f)
	g := &guard{}
	e.Guard = g
	runTo(t, p, StepDeployB)
	g.set(errors.New("digests differ on /mesos"), 2)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepFlip, StatusFailed)
	if m.Primary != "A" || m.Flip != nil || m.Epoch != 2 || !strings.Contains(m.LastError, "flip aborted, primary stays A: digests differ on /mesos") {
		t.Fatalf("aborted flip left %+v", m)
	}
	f.mu.Lock()
	flips := strings.Join(f.flips, "; ")
	f.mu.Unlock()
	if flips != "epoch 1 to B: [p1 p2]; epoch 2 to A: [p1 p2]" {
		t.Fatalf("proxies were asked: %s", flips)
	}
	g.mu.Lock()
	checks := fmt.Sprint(g.checks)
	g.mu.Unlock()
	if checks != "[A->B A->B]" {
		t.Fatalf("guard checks %s", checks)
	}
	g.set(nil, 0)
	if err := op(p, CmdRetry, 0); err != nil {
		t.Fatal(err)
	}
	if m := waitStatus(t, p, StepFlip, StatusSucceeded); m.Primary != "B" || m.Epoch != 3 {
		t.Fatalf("flip after the abort: %+v", m)
	}
}

// TestReverseFlipIsGuarded: a rollback across the flip waits until A has
// every change (the guard, B to A); meanwhile the primary stays B and the
// reason is shown.
func TestReverseFlipIsGuarded(t *testing.T) {
	f := &fleet{proxies: []string{"p1"}}
	e, p, _ := newExecutor(t, f)
	g := &guard{}
	e.Guard = g
	runTo(t, p, StepMastersOnB)
	g.set(errors.New("digests differ on /mesos"), 0)
	if err := op(p, CmdRollback, StepDeployB); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := p.State().Migrations["m"]
		if m.Status == StatusRollingBack && strings.Contains(m.LastError, "reverse flip refused, primary stays B: digests differ") {
			if m.Primary != "B" {
				t.Fatalf("primary %s while the reverse flip is refused", m.Primary)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollback not held: %+v", m)
		}
		time.Sleep(5 * time.Millisecond)
	}
	g.set(nil, 0)
	if m := waitStatus(t, p, StepDeployB, StatusSucceeded); m.Primary != "A" || m.Epoch != 2 {
		t.Fatalf("after the reverse flip: %+v", m)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.checks) == 0 || g.checks[0] != "B->A" {
		t.Fatalf("reverse flip checked %v", g.checks)
	}
}
