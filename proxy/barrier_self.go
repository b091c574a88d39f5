package proxy

import (
	"context"
	"time"

	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// A proxy the barrier did not hold (SPEC.md 4.10). The control plane
// announces its barrier under the old primary's fence before it asks the
// first proxy to hold, and withdraws the announcement once it has
// released the holds (fence.Announce, fence.Withdraw). A proxy that reads
// it at its lease renewal (at start: before it serves its first request)
// while it holds an older epoch and no hold holds itself, as if the
// control plane had asked it (Hold: drain, hold marker, budget), and
// watches the fence and the announcement: the fence raised to the
// barrier's epoch, it swaps (its versions are its own until an agreed
// peer's settle them) and holds on (a hold or swap request of the control
// plane makes the hold the barrier's: its swap and release are then the
// control plane's); the announcement gone, it resumes
// with its peers (on the new primary after the swap, on the old one if
// the barrier ended without a flip). Its hold ends by itself after its
// budget like any hold (the marker settles it against the raise). It
// holds itself once per round of the announcement, and never for a
// barrier whose hold the control plane asked of it: a barrier whose
// control leader died costs a budget's pause at most, until a new leader
// announces it again.

// selfPoll is how often a proxy holding itself reads the announcement.
const selfPoll = 20 * time.Millisecond

// noticeBarrier reads, through c (the fence watcher's session to the
// primary of r), the announcement of a barrier beside the fence rec just
// read, and holds the proxy for it if it should. Called before the lease
// is renewed: at start, the hold is taken before the first request is
// served unless a request already waits for the lease.
func (s *Server) noticeBarrier(ctx context.Context, c *zkclient.Conn, r *roles, rec fence.Record) {
	b, ok, err := fence.ReadBarrier(ctx, c, s.cfg.FencePath)
	if err != nil {
		s.logs.warn(s.log, "barrier_read", "could not read the flip barrier's announcement beside the fence; a barrier that did not hold this proxy is not noticed until the next round",
			"primary", r.primary.Flag(), "err", err)
		return
	}
	if !ok || b.Epoch <= r.epoch || b.Epoch <= rec.Epoch || !b.Primary.Valid() || b.Primary == r.primary {
		return // none, or stale (the fence records it), or nothing to swap
	}
	if s.holdingFor(b.Epoch) || s.holdAsked.Load() == b.Epoch || s.askedHold.Load() == b.Epoch || s.selfRound.Swap(b.Round) == b.Round {
		s.selfRound.Store(b.Round)
		return // held (or asked) by the control plane, or held itself once for this round
	}
	taken := make(chan struct{})
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		s.holdItself(b, taken)
	}()
	// Requests wait for the lease: take the hold first, so none reaches the
	// old primary meanwhile. A request already waiting for the lease holds
	// the hold for reading: it goes on when the lease is renewed and the
	// hold's drain waits for it (and its mirror).
	wait := time.NewTimer(min(s.pauseBudget()/4, 500*time.Millisecond))
	defer wait.Stop()
	select {
	case <-taken:
	case <-done:
	case <-wait.C:
	case <-s.ctx.Done():
	}
}

// holdItself holds the proxy for the announced barrier b until the
// announcement is gone, swapping once the fence records b's epoch, unless
// the control plane asks for the same hold (then the barrier's swap and
// release are its), or the hold is released or runs out.
func (s *Server) holdItself(b fence.Barrier, taken chan<- struct{}) {
	s.log.Info("flip barrier: a barrier is announced on this proxy's primary and holds no request of this proxy yet; holding its clients",
		"epoch", b.Epoch, "primary", b.Primary.Flag())
	left, err := s.holdFor(s.ctx, b.Epoch, b.Primary, true, taken)
	if err != nil {
		s.log.Warn("flip barrier: could not hold this proxy for the announced barrier; serving from the old primary (its writes are refused once the fence is raised, and it moves by itself)",
			"epoch", b.Epoch, "err", err, "hint", "look for the drain's reason above (a request in flight past the pause budget)")
		return
	}
	s.heldMu.Lock()
	h := s.held
	s.heldMu.Unlock()
	if left == 0 || h == nil || h.epoch != b.Epoch {
		return // nothing to hold (already at the epoch), or the control plane's hold
	}
	outcome := "ran out"
	defer func() {
		s.heldMu.Lock()
		self := h.self
		s.heldMu.Unlock()
		if !self {
			return // the control plane asked for this hold: an ordinary barrier
		}
		s.m.fenced.WithLabelValues("self_hold").Inc()
		s.log.Warn("flip barrier: a barrier announced on this proxy's primary did not hold this proxy (restarted inside it, or not listed by the control plane); it held its clients by itself",
			"epoch", b.Epoch, "primary", b.Primary.Flag(), "outcome", outcome, "held_for", time.Since(h.start).Round(time.Millisecond),
			"hint", "nothing to do: its clients saw a pause, as with the control plane's hold")
	}()
	// The announcement and the fence are read on the old primary: through
	// the hold marker's session while it is open (the fence watcher's
	// moves to the new primary at the swap), else one dialled here.
	var own *zkclient.Conn
	defer func() {
		if own != nil {
			_ = own.Close()
		}
	}()
	conn := func() *zkclient.Conn {
		if c := h.markerConn; c != nil && c.Err() == nil {
			return c
		}
		if own != nil && own.Err() == nil {
			return own
		}
		if own != nil {
			_ = own.Close()
			own = nil
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
		defer cancel()
		c, err := zkclient.Dial(ctx, h.cur.upstream, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial,
			SessionTimeout: max(2*s.pauseBudget(), 4*time.Second)})
		if err != nil {
			return nil
		}
		own = c
		return c
	}
	t := time.NewTicker(selfPoll)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			if outcome == "ran out" {
				outcome = "released or ran out"
			}
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.heldMu.Lock()
		adopted, swapped := !h.self, h.swapped
		s.heldMu.Unlock()
		if adopted {
			return
		}
		c := conn()
		if c == nil {
			continue // the hold ends after its budget
		}
		ctx, cancel := context.WithTimeout(s.ctx, max(s.pauseBudget()/4, time.Second))
		raised, over := s.barrierState(ctx, c, b)
		cancel()
		if raised && !swapped {
			if err := s.swap(s.ctx, b.Epoch, b.Primary, false); err != nil {
				s.log.Warn("flip barrier: the fence was raised while this proxy held itself, but its swap failed; the fence watcher moves it", "epoch", b.Epoch, "err", err)
				over = true
			} else {
				outcome = "swapped"
			}
		}
		if over {
			if outcome != "swapped" {
				outcome = "released without a flip"
			}
			s.Release(b.Epoch)
			return
		}
	}
}

// barrierState reads the announcement of b and then the fence through c
// (in that order: one session sees ZooKeeper's transactions in order, and
// the control plane raises the fence before it withdraws the
// announcement): raised when the fence records b's epoch and primary,
// over when the announcement is gone (or replaced by another epoch's), or
// the fence records a later flip. A read that fails is neither.
func (s *Server) barrierState(ctx context.Context, c *zkclient.Conn, b fence.Barrier) (raised, over bool) {
	now, ok, err := fence.ReadBarrier(ctx, c, s.cfg.FencePath)
	if err != nil {
		return false, false
	}
	over = !ok || now.Epoch != b.Epoch
	rec, err := fence.ReadExisting(ctx, c, s.cfg.FencePath)
	if err != nil {
		return false, over
	}
	raised = rec.Epoch == b.Epoch && rec.Primary == b.Primary
	return raised, over || rec.Epoch > b.Epoch || rec.Epoch == b.Epoch && !raised
}
