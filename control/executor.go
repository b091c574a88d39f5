package control

import (
	"context"
	"errors"
	"fmt"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"log/slog"
	"slices"
	"time"
)

// Proposer replicates commands and exposes the applied state; raftstore.Node
// is one. Apply may only succeed on the leader.
type Proposer interface {
	Apply(ctx context.Context, c Command) error
	State() *State
	IsLeader() bool
}

// LogBarrier is a Proposer that can wait until it has applied everything
// committed before the call (raftstore.Node, with Raft's Barrier). A node
// that has just become leader may not have applied yet what its
// predecessor committed (entries of the old term are applied once the new
// term's first entry commits): its State is then older than the log. The
// executor waits for the barrier before its first pass as leader, so it
// never acts on such a state (it re-ran a step that had succeeded, and
// started phase 1's sync beside the supervisor's bookkeeping).
type LogBarrier interface {
	Barrier(timeout time.Duration) error
}

// StepRunner performs one step. Every method must be idempotent: after a
// leader change the new leader calls them again for the step in progress.
type StepRunner interface {
	// Run does the step's work (start processes, begin sync...).
	Run(ctx context.Context, m *Migration) error
	// Verify checks the step's success criteria; nil means they hold.
	Verify(ctx context.Context, m *Migration) error
	// Undo reverses the step for a rollback.
	Undo(ctx context.Context, m *Migration) error
}

// ProxyFleet is the set of proxies a flip must reach.
type ProxyFleet interface {
	// Live lists the proxies alive now (gossip membership).
	Live(ctx context.Context) ([]string, error)
	// Flip asks the proxies to drain their mirror writes and switch to
	// primary at epoch, and returns those that acknowledged before ctx
	// ended. Proxies that acknowledged an epoch already ack it again.
	// Proxies that answered but did not switch are named in an error
	// that implements Refusals.
	Flip(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) (acked []string, err error)
}

// FlipGuard checks the preconditions of a flip of the primary from one
// ensemble ("A" or "B") to the other: the replicator runs on this node (the
// leader), the digests of every path are equal, the lag is under the
// threshold, no conflict is open, and every sequence counter on the new
// primary is at or above the old one's. It returns nil when they hold, or
// the reason they do not, once ctx ends. It may pad the new primary's
// sequence counters (that changes no data).
type FlipGuard interface {
	FlipReady(ctx context.Context, m *Migration, from, to ensemble.Name) error
}

// Executor drives migrations on the leader: it runs the current step when
// its status is running, reports the result, runs the flip barrier, and
// undoes steps on rollback. It does nothing on followers, and nothing while
// a migration is paused.
type Executor struct {
	P     Proposer
	Steps map[Step]StepRunner // every step but the flip
	Fleet ProxyFleet
	// Interval between passes (default 200 ms); FlipTimeout bounds the wait
	// for acknowledgements before unanswered proxies are fenced (10 s).
	Interval, FlipTimeout time.Duration
	Logger                *slog.Logger
	// Name is the author of the executor's commands (the node id).
	Name string
	// OnFail, if set, hears of every failed step (for alerts).
	OnFail func(m *Migration, err error)
	// Guard, if set, checks every flip, forward and reverse, before its
	// barrier opens and again before it completes; GuardTimeout bounds each
	// check (default 10 s).
	Guard        FlipGuard
	GuardTimeout time.Duration
	// Fencer, if set with a Fleet that is a BarrierFleet, makes every flip
	// the two-phase barrier (barrier.go): hold every proxy, check the
	// guard, commit, raise the fences, swap every proxy, release.
	Fencer Fencer

	// retries counts, per migration and epoch, barriers tried again: the
	// guard could not finish within the holds' budget, or a proxy answered
	// but could not hold (barrier_retry.go).
	retries retryCounter
}

// ready runs the guard, if any, for a flip of m's primary to primary.
func (e *Executor) ready(ctx context.Context, m *Migration, primary ensemble.Name) error {
	if e.Guard == nil {
		return nil
	}
	timeout := e.GuardTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	from := primary.Other()
	return e.Guard.FlipReady(gctx, m, from, primary)
}

// Run executes until ctx ends.
func (e *Executor) Run(ctx context.Context) error {
	if e.Interval == 0 {
		e.Interval = 200 * time.Millisecond
	}
	if e.FlipTimeout == 0 {
		e.FlipTimeout = 10 * time.Second
	}
	if e.Logger == nil {
		e.Logger = slog.Default()
	}
	t := time.NewTicker(e.Interval)
	defer t.Stop()
	caughtUp := false // applied everything committed since this node leads
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		// Both may be ready: a stopped executor starts no other pass
		// (a test's leader killed inside an undo undid it twice).
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !e.P.IsLeader() {
			caughtUp = false
			continue
		}
		if b, ok := e.P.(LogBarrier); ok && !caughtUp {
			if err := b.Barrier(5 * time.Second); err != nil {
				e.Logger.Warn("executor: catching up with the log before acting as leader", "err", err)
				continue
			}
		}
		caughtUp = true
		e.passes(ctx)
	}
}

// passes does one pass over every migration, in a context that ends when
// this node stops leading: a deposed leader's runner (a master move, an
// undo) must not go on beside the new leader's.
func (e *Executor) passes(ctx context.Context) {
	lctx, cancel := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { // owned by this pass: ends with it
		defer close(watched)
		t := time.NewTicker(e.Interval)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-t.C:
				if !e.P.IsLeader() {
					e.Logger.Warn("executor: this node no longer leads; its work in progress stops (the new leader resumes it)")
					cancel()
					return
				}
			}
		}
	}()
	defer func() { cancel(); <-watched }()
	st := e.P.State()
	for _, id := range st.MigrationIDs() {
		if err := e.pass(lctx, st.Migrations[id]); err != nil && lctx.Err() == nil {
			e.Logger.Warn("executor pass", "migration", id, "err", err)
		}
	}
}

func (e *Executor) cmd(kind Kind, m *Migration) Command {
	return Command{Kind: kind, Migration: m.ID, By: "executor:" + e.Name, Time: time.Now().UTC(), Step: m.Step}
}

// pass does what the migration's state asks for now.
func (e *Executor) pass(ctx context.Context, m *Migration) error {
	if m.Paused {
		return nil
	}
	switch m.Status {
	case StatusRunning:
		if m.Step == StepFlip {
			return e.flip(ctx, m, "B")
		}
		return e.runStep(ctx, m)
	case StatusRollingBack:
		return e.rollback(ctx, m)
	}
	return nil
}

func (e *Executor) runStep(ctx context.Context, m *Migration) error {
	r, ok := e.Steps[m.Step]
	if !ok {
		return fmt.Errorf("no runner for step %s", m.Step)
	}
	if err := r.Run(ctx, m); err != nil {
		return e.fail(ctx, m, fmt.Errorf("%s: %w", m.Step, err))
	}
	if m.Step == StepRemoveA {
		if err := e.retireA(ctx, m); err != nil { // executor_retire.go
			return e.fail(ctx, m, fmt.Errorf("%s: %w", m.Step, err))
		}
	}
	if err := r.Verify(ctx, m); err != nil {
		return e.fail(ctx, m, fmt.Errorf("%s: success criteria: %w", m.Step, err))
	}
	return e.P.Apply(ctx, e.cmd(CmdStepSucceeded, m))
}

func (e *Executor) fail(ctx context.Context, m *Migration, err error) error {
	if e.OnFail != nil {
		e.OnFail(m, err)
	}
	c := e.cmd(CmdStepFailed, m)
	c.Error = err.Error()
	if aerr := e.P.Apply(ctx, c); aerr != nil {
		return errors.Join(err, aerr)
	}
	return err
}

// flip runs the barrier to primary: begins an epoch unless one is open,
// collects acknowledgements, fences the proxies that did not answer in
// time, completes it, and marks the step done.
func (e *Executor) flip(ctx context.Context, m *Migration, primary ensemble.Name) error {
	f := m.Flip
	if f == nil && m.Primary == primary {
		// Already there (re-validating the flip step after a rollback to
		// it): nothing to flip.
		return e.P.Apply(ctx, e.cmd(CmdStepSucceeded, m))
	}
	if f == nil || f.Done && m.Primary != primary {
		if err := e.ready(ctx, m, primary); err != nil {
			return e.fail(ctx, m, fmt.Errorf("flip refused: %w", err))
		}
		live, err := e.Fleet.Live(ctx)
		if err != nil {
			return fmt.Errorf("flip: list proxies: %w", err)
		}
		c := e.cmd(CmdFlipBegin, m)
		c.Epoch = m.Epoch + 1
		c.Proxies = live
		if err := e.P.Apply(ctx, c); err != nil {
			return err
		}
		m = e.P.State().Migrations[m.ID]
		f = m.Flip
	}
	if bf, ok := e.barrierOf(); ok && !f.Done {
		if err := e.barrier(ctx, m, f, bf); errors.Is(err, errHoldAgain) {
			return nil // released; the next pass holds again
		} else if err != nil {
			return err
		}
		m = e.P.State().Migrations[m.ID]
	} else if !f.Done {
		var waiting []string
		for _, p := range f.Expected {
			if !slices.Contains(f.Acked, p) && !slices.Contains(f.Fenced, p) {
				waiting = append(waiting, p)
			}
		}
		if len(waiting) > 0 {
			fctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
			acked, err := e.Fleet.Flip(fctx, m.ID, f.Epoch, f.Primary, waiting)
			cancel()
			if err != nil && ctx.Err() != nil {
				return err
			}
			for _, p := range acked {
				c := e.cmd(CmdFlipAck, m)
				c.Epoch, c.Proxy = f.Epoch, p
				if err := e.P.Apply(ctx, c); err != nil {
					return err
				}
			}
			// A proxy that answered but did not flip is alive: asked again
			// on the next pass, then the flip is aborted; never fenced.
			refused := refusedBy(err)
			for _, p := range waiting {
				if _, alive := refused[p]; alive || slices.Contains(acked, p) {
					continue
				}
				c := e.cmd(CmdFlipFence, m)
				c.Epoch, c.Proxy = f.Epoch, p
				c.Detail = "no acknowledgement within " + e.FlipTimeout.String()
				if err := e.P.Apply(ctx, c); err != nil {
					return err
				}
			}
			if len(refused) > 0 {
				if e.retryRefused(m.ID, f.Epoch, "flip", refused) {
					return nil
				}
				return e.abort(ctx, m, f, fmt.Errorf("%w (asked %d times): %s; %s",
					ErrProxyCouldNotHold, maxRefusedRetries+1, describeRefusals(refused), couldNotHoldHint))
			}
		}
		// The preconditions again, now that the proxies hold still: one
		// that failed meanwhile aborts the flip and keeps the old primary.
		if err := e.ready(ctx, m, f.Primary); err != nil {
			return e.abort(ctx, m, f, err)
		}
		c := e.cmd(CmdFlipDone, m)
		c.Epoch = f.Epoch
		if err := e.P.Apply(ctx, c); err != nil {
			return err
		}
	}
	if m.Step == StepFlip && m.Status == StatusRunning {
		return e.P.Apply(ctx, e.cmd(CmdStepSucceeded, m))
	}
	return nil
}

// abort ends the open barrier f without a flip: the proxies go back to the
// old primary under the next epoch, then flip-abort fails the step with the
// reason. A new leader that finds the barrier still open checks again and
// aborts again (sending the proxies back is idempotent).
func (e *Executor) abort(ctx context.Context, m *Migration, f *Flip, why error) error {
	live, err := e.Fleet.Live(ctx)
	if err != nil {
		return fmt.Errorf("abort flip: list proxies: %w", err)
	}
	fctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
	acked, err := e.Fleet.Flip(fctx, m.ID, f.Epoch+1, m.Primary, live)
	cancel()
	if err != nil && ctx.Err() != nil {
		return err
	}
	if len(acked) < len(live) {
		e.Logger.Warn("abort flip: proxies did not acknowledge the return to the old primary; they keep the fenced epoch", "acked", acked, "live", live)
	}
	c := e.cmd(CmdFlipAbort, m)
	c.Epoch, c.Error = f.Epoch, why.Error()
	if err := e.P.Apply(ctx, c); err != nil {
		return errors.Join(why, err)
	}
	if e.OnFail != nil {
		e.OnFail(m, fmt.Errorf("flip aborted: %w", why))
	}
	return why
}

// rollback undoes the steps above RollbackTo, newest first, then reports
// it. Undoing the flip is a reverse flip to A under a new epoch. Each undo
// done is recorded (step-undone) before the next begins, so a new leader
// resumes with the undo its predecessor was doing and never repeats one
// it finished: an undo is idempotent only from its own starting point
// (the undo of phase 3 repeated after phase 2's had begun would bring
// back a B master phase 2's undo had stopped).
func (e *Executor) rollback(ctx context.Context, m *Migration) error {
	for s := m.NextUndo(); s > m.RollbackTo; s-- {
		var epoch int64
		if s == StepFlip {
			if m.Primary == ensemble.Target || m.Flip != nil {
				// B is the source of truth until A has every change: the
				// reverse flip has the forward flip's guard.
				if m.Primary == ensemble.Target {
					if err := e.ready(ctx, m, "A"); err != nil {
						return e.holdRollback(ctx, m, fmt.Errorf("reverse flip refused, primary stays B: %w", err))
					}
				}
				epoch = m.Epoch + 1
				if bf, ok := e.barrierOf(); ok {
					if err := e.reverseBarrier(ctx, m, epoch, bf); errors.Is(err, errHoldAgain) {
						return nil // released; the next pass holds again
					} else if err != nil {
						return err
					}
				} else if err := e.reverseFlip(ctx, m, epoch); err != nil {
					return err
				}
			}
		} else if r, ok := e.Steps[s]; ok {
			if err := r.Undo(ctx, m); err != nil {
				return fmt.Errorf("undo %s: %w", s, err)
			}
		}
		c := e.cmd(CmdStepUndone, m)
		c.Step, c.Epoch = s, epoch
		if err := e.P.Apply(ctx, c); err != nil {
			return fmt.Errorf("record the undo of %s: %w", s, err)
		}
		if m = e.P.State().Migrations[m.ID]; m == nil {
			return fmt.Errorf("migration gone while rolling back")
		}
	}
	c := e.cmd(CmdRolledBack, m)
	c.Step = m.RollbackTo
	return e.P.Apply(ctx, c)
}

// holdRollback records why a rollback cannot go on yet (once per reason:
// it is retried every pass) and returns it.
func (e *Executor) holdRollback(ctx context.Context, m *Migration, why error) error {
	if m.LastError != why.Error() {
		c := e.cmd(CmdStepFailed, m)
		c.Error = why.Error()
		if err := e.P.Apply(ctx, c); err != nil {
			return errors.Join(why, err)
		}
		if e.OnFail != nil {
			e.OnFail(m, why)
		}
	}
	return why
}

// reverseFlip moves the proxies back to A. It runs while the migration is
// rolling back, so it talks to the fleet directly; the new primary becomes
// the state's when the rollback is reported.
func (e *Executor) reverseFlip(ctx context.Context, m *Migration, epoch int64) error {
	live, err := e.Fleet.Live(ctx)
	if err != nil {
		return fmt.Errorf("reverse flip: list proxies: %w", err)
	}
	fctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
	defer cancel()
	acked, err := e.Fleet.Flip(fctx, m.ID, epoch, ensemble.Source, live)
	if err != nil && ctx.Err() != nil {
		return err
	}
	if len(acked) < len(live) {
		e.Logger.Warn("reverse flip: proxies did not acknowledge; they keep the fenced epoch", "acked", acked, "live", live)
	}
	return nil
}
