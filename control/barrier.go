package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
)

// BarrierFleet is a ProxyFleet that speaks the two-phase barrier (SPEC.md
// 4.10): hold every proxy, raise the fences, swap every proxy, release.
// The executor uses it when the fleet has it and a Fencer is set. Hold
// and Swap name the proxies that answered but did not do the step in an
// error that implements Refusals (the others they return are those that
// did it; any proxy in neither did not answer).
type BarrierFleet interface {
	ProxyFleet
	// Hold asks the proxies to hold client requests and drain for a flip
	// to primary at epoch. It returns those that hold (or already serve
	// primary at epoch), the shortest hold budget among them, counted
	// from the request (0 when none holds anything), and the hold marker
	// of each proxy that armed one.
	Hold(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) (held []string, budget time.Duration, markers map[string]fence.Marker, err error)
	// Swap asks the proxies to move their sessions to primary at epoch
	// (the fences record it) and returns those that did.
	Swap(ctx context.Context, migration string, epoch int64, primary ensemble.Name, proxies []string) (swapped []string, err error)
	// Release ends the proxies' holds for epoch.
	Release(ctx context.Context, migration string, epoch int64, proxies []string)
}

// Fencer raises the fence znode of both ensembles of a migration to an
// epoch and primary (idempotent: a fence at that epoch or a later one is
// left alone). Once it returns with nothing lapsed, no proxy holding an
// older epoch can write to either ensemble. The old primary's fence is
// raised only while every hold marker in markers (by proxy) has its
// version (fence.RaiseIf): lapsed names the proxies whose marker changed
// (their hold ran out and they resumed their clients first), and then
// nothing is raised.
type Fencer interface {
	Fence(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name, markers map[string]fence.Marker) (lapsed []string, err error)
}

// Announcer is a Fencer that also announces an open barrier on the old
// primary (fence.Announce, SPEC.md 4.10 "A proxy the barrier did not
// hold"): written before the first proxy is asked to hold, withdrawn
// once the holds are released (after the swaps, or without a flip). A
// proxy at an older epoch that finds it holds itself: one restarted
// inside the barrier, or one the control plane did not list, never
// serves writes on the old primary while its peers hold.
type Announcer interface {
	Announce(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name) error
	Withdraw(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name) error
}

// announce announces the barrier at epoch towards primary, when the
// Fencer can: a failure stops the barrier before any hold (the next pass
// tries again), since a proxy restarted meanwhile would not hold.
func (e *Executor) announce(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name) error {
	a, ok := e.Fencer.(Announcer)
	if !ok {
		return nil
	}
	if err := a.Announce(ctx, m, epoch, primary); err != nil {
		return fmt.Errorf("flip barrier at epoch %d: announce it on the old primary %s: %w (nothing held; retrying)", epoch, primary.Other(), err)
	}
	return nil
}

// release ends the barrier's pass: it releases the proxies' holds, then
// withdraws the announcement, so a proxy holding itself resumes with its
// peers (after its swap, when the fence was raised). A withdrawal that
// fails is logged: a proxy holding itself then ends its hold after its
// budget, and one that restarts holds itself once for the stale
// announcement unless the fence records its epoch.
func (e *Executor) release(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name, bf BarrierFleet, proxies []string) {
	bf.Release(ctx, m.ID, epoch, proxies)
	if a, ok := e.Fencer.(Announcer); ok {
		if err := a.Withdraw(ctx, m, epoch, primary); err != nil {
			e.Logger.Warn("flip barrier: could not withdraw the barrier's announcement; a proxy holding itself for it resumes after its pause budget",
				"migration", m.ID, "epoch", epoch, "err", err, "hint", "check that the control node reaches the old primary "+string(primary.Other()))
		}
	}
}

// barrierOf returns the two-phase fleet when the executor can run the
// two-phase barrier.
func (e *Executor) barrierOf() (BarrierFleet, bool) {
	bf, ok := e.Fleet.(BarrierFleet)
	return bf, ok && e.Fencer != nil
}

// errHoldExpired means the holds would end before the flip could be
// committed: nothing was fenced; the flip is aborted.
var errHoldExpired = errors.New("the proxies' hold budget ran out before the flip could be committed")

// barrier runs the open barrier f in two phases. Before the commit:
// hold every expected proxy (one that does not answer is fenced; one that
// answers but cannot hold is alive: every hold is released and held again
// on the next pass, up to maxRefusedRetries times, then the flip is
// aborted before any fence), check the guard within the holds' budget (a
// failure releases every hold and aborts with the old primary kept;
// running out of budget releases and retries on the next pass), record
// flip-commit. After it (also for a new leader that finds the barrier
// committed): raise the fences, swap every proxy not fenced (one that
// does not answer is fenced; one that answers but does not swap is asked
// again first), release, record flip-done.
func (e *Executor) barrier(ctx context.Context, m *Migration, f *Flip, bf BarrierFleet) error {
	pending := func(f *Flip) []string {
		var out []string
		for _, p := range f.Expected {
			if !slices.Contains(f.Acked, p) && !slices.Contains(f.Fenced, p) {
				out = append(out, p)
			}
		}
		return out
	}
	var markers map[string]fence.Marker
	if !f.Committed {
		waiting := pending(f)
		if err := e.announce(ctx, m, f.Epoch, f.Primary); err != nil {
			return err
		}
		sent := time.Now()
		hctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
		held, budget, holdMarkers, err := bf.Hold(hctx, m.ID, f.Epoch, f.Primary, waiting)
		markers = holdMarkers
		cancel()
		if err != nil && ctx.Err() != nil {
			return err
		}
		refused := refusedBy(err)
		for _, p := range waiting {
			if _, alive := refused[p]; !alive && !slices.Contains(held, p) {
				if err := e.fenceProxy(ctx, m, f.Epoch, p, "no answer to the hold within "+e.FlipTimeout.String()); err != nil {
					return err
				}
			}
		}
		if len(refused) > 0 {
			// Alive but not holding: a fence raised now would refuse its
			// clients' next writes. Nothing is fenced yet: release every
			// hold and hold them all again, or abort.
			e.release(ctx, m, f.Epoch, f.Primary, bf, slices.Sorted(maps.Keys(refusedAndHeld(held, refused))))
			if e.retryRefused(m.ID, f.Epoch, "hold", refused) {
				return errHoldAgain
			}
			return e.abortBarrier(ctx, m, f, fmt.Errorf("%w (asked %d times): %s; %s",
				ErrProxyCouldNotHold, maxRefusedRetries+1, describeRefusals(refused), couldNotHoldHint))
		}
		// The holds end by themselves at sent+budget: the commit must come
		// before, with room for the fences.
		// Half of it for the guard: the commit, the fences and the swaps
		// need the rest on a loaded machine (a hold that ends by itself
		// before the fence is raised makes its proxy's next writes fail).
		deadline := sent.Add(budget / 2)
		if budget == 0 {
			deadline = time.Now().Add(e.FlipTimeout)
		}
		gctx, cancel := context.WithDeadline(ctx, deadline)
		gerr := e.readyUntil(gctx, m, f.Primary)
		cancel()
		if gerr == nil && time.Now().After(deadline) {
			gerr = fmt.Errorf("%w (the guard took %v)", errHoldExpired, time.Since(sent).Round(time.Millisecond))
		}
		if gerr != nil {
			// Nothing is fenced yet: the old primary stays.
			e.release(ctx, m, f.Epoch, f.Primary, bf, held)
			if e.retryHold(m.ID, f.Epoch, gerr) {
				return errHoldAgain
			}
			return e.abortBarrier(ctx, m, f, gerr)
		}
		c := e.cmd(CmdFlipCommit, m)
		c.Epoch = f.Epoch
		if err := e.P.Apply(ctx, c); err != nil {
			e.release(ctx, m, f.Epoch, f.Primary, bf, held)
			return err
		}
		m = e.P.State().Migrations[m.ID]
		f = m.Flip
	}
	// Committed: from here the flip only goes forward.
	waiting := pending(f)
	if markers == nil {
		// Committed in an earlier pass (a new leader): the holds may have
		// run out; announce and hold again, which also tells the markers.
		if err := e.announce(ctx, m, f.Epoch, f.Primary); err != nil {
			return err
		}
		hctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
		_, _, markers, _ = bf.Hold(hctx, m.ID, f.Epoch, f.Primary, waiting)
		cancel()
	}
	if err := e.raiseFences(ctx, m, f.Epoch, f.Primary, bf, markers); err != nil {
		return fmt.Errorf("flip at epoch %d: raise the fences: %w (retrying)", f.Epoch, err)
	}
	swapped, refused, err := e.swapAll(ctx, m.ID, f.Epoch, f.Primary, bf, waiting)
	if err != nil {
		return err
	}
	e.release(ctx, m, f.Epoch, f.Primary, bf, f.Expected)
	for _, p := range waiting {
		if slices.Contains(swapped, p) {
			c := e.cmd(CmdFlipAck, m)
			c.Epoch, c.Proxy = f.Epoch, p
			if err := e.P.Apply(ctx, c); err != nil {
				return err
			}
			continue
		}
		why := "no answer to the swap within " + e.FlipTimeout.String()
		if r, ok := refused[p]; ok {
			why = fmt.Sprintf("answered the swap %d times but did not swap (%s)", maxRefusedRetries+1, r)
		}
		if err := e.fenceProxy(ctx, m, f.Epoch, p, why+" (its writes are fenced; it moves by itself when it reads the fence)"); err != nil {
			return err
		}
	}
	c := e.cmd(CmdFlipDone, m)
	c.Epoch = f.Epoch
	return e.P.Apply(ctx, c)
}

// maxFenceTries bounds the raises tried on the condition of the hold
// markers; the last one is unconditional (the flip is committed and only
// goes forward: a proxy that keeps resuming first has its writes fenced
// until it catches up by itself).
const maxFenceTries = 4

// raiseFences raises the fences of a committed flip while the held
// proxies still hold: a proxy whose hold ran out first (its marker
// changed: it resumed its clients on the old primary) is held again and
// the raise retried, so its clients see a longer pause, never a write
// refused by the fence.
func (e *Executor) raiseFences(ctx context.Context, m *Migration, epoch int64, primary ensemble.Name, bf BarrierFleet, markers map[string]fence.Marker) error {
	for try := 1; ; try++ {
		if try == maxFenceTries {
			markers = nil
		}
		lapsed, err := e.Fencer.Fence(ctx, m, epoch, primary, markers)
		if err != nil || len(lapsed) == 0 {
			return err
		}
		e.Logger.Warn("flip barrier: proxies resumed their clients before the fence was raised (their hold ran out); holding them again before raising it",
			"migration", m.ID, "epoch", epoch, "proxies", lapsed, "try", try, "of", maxFenceTries)
		// A new round of the announcement: a proxy that held itself for
		// the last one and ran out holds itself again.
		if err := e.announce(ctx, m, epoch, primary); err != nil {
			return err
		}
		hctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
		_, _, again, _ := bf.Hold(hctx, m.ID, epoch, primary, lapsed)
		cancel()
		if markers == nil {
			markers = map[string]fence.Marker{}
		}
		for _, p := range lapsed {
			delete(markers, p)
			if mk, ok := again[p]; ok {
				markers[p] = mk
			}
		}
	}
}

// errHoldAgain: the barrier released its holds to hold again on the next
// pass (retryHold); the flip goes on.
var errHoldAgain = errors.New("flip barrier: holding again")

// maxHoldRetries bounds the barriers tried again at one epoch when the
// guard could not finish within the holds' budget.
const maxHoldRetries = 3

// fenceProxy records that proxy p is out of the barrier at epoch.
func (e *Executor) fenceProxy(ctx context.Context, m *Migration, epoch int64, p, why string) error {
	c := e.cmd(CmdFlipFence, m)
	c.Epoch, c.Proxy, c.Detail = epoch, p, why
	return e.P.Apply(ctx, c)
}

// readyUntil runs the guard, if any, until ctx ends.
func (e *Executor) readyUntil(ctx context.Context, m *Migration, primary ensemble.Name) error {
	if e.Guard == nil {
		return nil
	}
	return e.Guard.FlipReady(ctx, m, primary.Other(), primary)
}

// abortBarrier ends an uncommitted barrier without a flip: the holds are
// released (done by the caller), the old primary stays, and flip-abort
// fails the step with the reason.
func (e *Executor) abortBarrier(ctx context.Context, m *Migration, f *Flip, why error) error {
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

// reverseBarrier moves the live proxies back to A at epoch with the
// two-phase barrier (the guard was checked by the caller): hold, fence,
// swap, release. The rule is the forward barrier's: a proxy that answers
// the hold but cannot hold is alive, so the fences are not raised over
// it: every hold is released and the barrier is tried again at the same
// epoch (errHoldAgain), up to maxRefusedRetries times; then the rollback
// is held up with the proxy named (primary stays B; it holds again after
// a cool-down of three FlipTimeouts). Proxies that do not answer are left
// fenced: they move by themselves when they read the fence.
func (e *Executor) reverseBarrier(ctx context.Context, m *Migration, epoch int64, bf BarrierFleet) error {
	key := retryKey(m.ID, epoch, "reverse")
	if why := e.retries.coolingDown(key); why != nil {
		if err := e.holdRollback(ctx, m, why); err != why {
			return err
		}
		return errHoldAgain // recorded and logged once: wait quietly
	}
	live, err := e.Fleet.Live(ctx)
	if err != nil {
		return fmt.Errorf("reverse flip: list proxies: %w", err)
	}
	if err := e.announce(ctx, m, epoch, ensemble.Source); err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
	held, _, markers, err := bf.Hold(hctx, m.ID, epoch, ensemble.Source, live)
	cancel()
	if err != nil && ctx.Err() != nil {
		return err
	}
	if refused := refusedBy(err); len(refused) > 0 {
		e.release(ctx, m, epoch, ensemble.Source, bf, slices.Sorted(maps.Keys(refusedAndHeld(held, refused))))
		if e.retryRefused(m.ID, epoch, "reverse", refused) {
			return errHoldAgain
		}
		why := fmt.Errorf("reverse flip refused, primary stays B: %w (asked %d times): %s; %s",
			ErrProxyCouldNotHold, maxRefusedRetries+1, describeRefusals(refused), couldNotHoldHint)
		e.retries.coolDown(key, 3*e.FlipTimeout, why)
		return e.holdRollback(ctx, m, why)
	}
	if err := e.raiseFences(ctx, m, epoch, ensemble.Source, bf, markers); err != nil {
		e.release(ctx, m, epoch, ensemble.Source, bf, held)
		return fmt.Errorf("reverse flip at epoch %d: raise the fences: %w (retrying)", epoch, err)
	}
	swapped, refused, err := e.swapAll(ctx, m.ID, epoch, ensemble.Source, bf, live)
	if err != nil {
		return err
	}
	e.release(ctx, m, epoch, ensemble.Source, bf, live)
	if len(swapped) < len(live) {
		e.Logger.Warn("reverse flip: proxies did not swap; their writes are fenced and they move by themselves when they read the fence",
			"swapped", swapped, "live", live, "refused", describeRefusals(refused))
	}
	return nil
}

// swapAll asks the proxies to swap to primary at epoch (the fences are
// raised: the flip only goes forward) and asks again, up to
// maxRefusedRetries times, those that answered but did not swap (still
// held: their hold lasts until released). It returns those that swapped
// and the last answers of those that kept refusing.
func (e *Executor) swapAll(ctx context.Context, migration string, epoch int64, primary ensemble.Name, bf BarrierFleet, proxies []string) ([]string, map[string]string, error) {
	var swapped []string
	for try := 0; ; try++ {
		sctx, cancel := context.WithTimeout(ctx, e.FlipTimeout)
		ok, err := bf.Swap(sctx, migration, epoch, primary, proxies)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, nil, err
		}
		swapped = append(swapped, ok...)
		refused := refusedBy(err)
		if len(refused) == 0 || try == maxRefusedRetries {
			slices.Sort(swapped)
			return swapped, refused, nil
		}
		e.Logger.Warn("flip barrier: proxies answered the swap but did not swap (they are alive and still held); asking them again",
			"migration", migration, "epoch", epoch, "proxies", describeRefusals(refused), "try", try+1, "of", maxRefusedRetries)
		proxies = proxies[:0:0]
		for p := range refused {
			proxies = append(proxies, p)
		}
		slices.Sort(proxies)
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(e.Interval):
		}
	}
}
