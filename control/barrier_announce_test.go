package control

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// announcingFleet is barrierFleet whose Fencer also announces the
// barrier (an Announcer), noted in the same log.
type announcingFleet struct{ *barrierFleet }

func (a announcingFleet) Announce(_ context.Context, _ *Migration, epoch int64, primary ensemble.Name) error {
	a.note(fmt.Sprintf("announce %d %s", epoch, primary))
	return nil
}

func (a announcingFleet) Withdraw(_ context.Context, _ *Migration, epoch int64, _ ensemble.Name) error {
	a.note(fmt.Sprintf("withdraw %d", epoch))
	return nil
}

func startAnnouncingExecutor(t *testing.T, b *barrierFleet, g FlipGuard) *localProposer {
	p := &localProposer{s: NewState()}
	rec := &recorder{failRuns: map[Step]int{}}
	steps := map[Step]StepRunner{}
	for s := StepDeployB; s <= StepRemoveA; s++ {
		if s != StepFlip {
			steps[s] = stepRunner{s, rec}
		}
	}
	e := &Executor{P: p, Steps: steps, Fleet: b, Fencer: announcingFleet{b}, Guard: g, Interval: 5 * time.Millisecond, FlipTimeout: 100 * time.Millisecond, Name: "test"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// TestBarrierAnnouncesItselfBeforeTheFirstHold (SPEC.md 4.10, "A proxy
// the barrier did not hold"): the announcement is written before any
// proxy is asked to hold, so a proxy restarted inside the barrier finds
// it, and withdrawn once the holds are released, after the swaps or
// without a flip, so a proxy holding itself resumes with its peers.
func TestBarrierAnnouncesItselfBeforeTheFirstHold(t *testing.T) {
	b := &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	p := startAnnouncingExecutor(t, b, &guard{})
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, p, StepFlip, StatusSucceeded)
	if got, want := b.calls(), "announce 1 B; hold 1 B [p1 p2]; fence 1 B; swap 1 B [p1 p2]; release 1 [p1 p2]; withdraw 1"; got != want {
		t.Fatalf("barrier calls:\n got %s\nwant %s", got, want)
	}

	b = &barrierFleet{fleet: fleet{proxies: []string{"p1", "p2"}}}
	g := &guard{}
	g.set(errors.New("digests differ on /mesos"), 2)
	p = startAnnouncingExecutor(t, b, g)
	runTo(t, p, StepDeployB)
	if err := op(p, CmdAdvance, StepFlip); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, p, StepFlip, StatusFailed)
	if got, want := b.calls(), "announce 1 B; hold 1 B [p1 p2]; release 1 [p1 p2]; withdraw 1"; got != want {
		t.Fatalf("barrier calls of an aborted flip:\n got %s\nwant %s", got, want)
	}
}
