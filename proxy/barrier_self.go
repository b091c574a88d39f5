package proxy

import (
	"context"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// A proxy the barrier did not hold (SPEC.md 4.10). The control plane
// announces its barrier under the old primary's fence before it asks the
// first proxy to hold, and the raise deletes the announcement in the same
// multi that raises the fence (fence.Announce, fence.RaiseIf). A proxy
// that reads it at its lease renewal (at start: before it serves its
// first request) while it holds an older epoch and no hold holds itself,
// as if the control plane had asked it (Hold: drain, hold marker,
// budget), and watches the announcement: gone with the fence raised, it
// swaps (its versions are its own until an agreed peer's settle them);
// gone without, the barrier was released: it resumes on the old primary.
// Its hold ends by itself after its budget like any hold (the marker
// settles it against the raise), and it holds itself once per round of
// the announcement: a barrier whose control leader died costs a budget's
// pause at most, until a new leader announces it again.

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
	if s.holdingFor(b.Epoch) || s.selfRound.Swap(b.Round) == b.Round {
		s.selfRound.Store(b.Round)
		return // held by the control plane, or held itself once for this round
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
// announcement is gone (then swaps if the fence was raised, else
// resumes), the hold is released or runs out.
func (s *Server) holdItself(b fence.Barrier, taken chan<- struct{}) {
	s.log.Warn("flip barrier: a barrier announced on this proxy's primary did not hold this proxy (restarted inside it, or not listed by the control plane); holding its clients by itself until the fence is raised (then it moves) or the barrier is released",
		"epoch", b.Epoch, "primary", b.Primary.Flag(), "hint", "nothing to do: its clients see a pause, as with the control plane's hold")
	left, err := s.holdFor(s.ctx, b.Epoch, b.Primary, true, taken)
	if err != nil {
		s.log.Warn("flip barrier: could not hold this proxy for the announced barrier; serving from the old primary (its writes are refused once the fence is raised, and it moves by itself)",
			"epoch", b.Epoch, "err", err, "hint", "look for the drain's reason above (a request in flight past the pause budget)")
		return
	}
	s.heldMu.Lock()
	h := s.held
	s.heldMu.Unlock()
	if left == 0 || h == nil || h.epoch != b.Epoch || !h.self {
		return // nothing to hold (already at the epoch), or the control plane's hold
	}
	s.m.fenced.WithLabelValues("self_hold").Inc()
	t := time.NewTicker(selfPoll)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		c := h.markerConn
		if c == nil {
			c = s.primaryConn(h.cur.primary)
		}
		if c == nil {
			continue // the hold ends after its budget
		}
		ctx, cancel := context.WithTimeout(s.ctx, max(s.pauseBudget()/4, time.Second))
		raised, gone := s.barrierEnded(ctx, c, b)
		cancel()
		switch {
		case raised:
			if err := s.Swap(s.ctx, b.Epoch, b.Primary); err != nil {
				s.log.Warn("flip barrier: the fence was raised while this proxy held itself, but its swap failed; the fence watcher moves it", "epoch", b.Epoch, "err", err)
			}
			s.Release(b.Epoch)
			return
		case gone:
			s.log.Info("flip barrier: the barrier this proxy held itself for was released without a flip; resuming on the old primary", "epoch", b.Epoch)
			s.Release(b.Epoch)
			return
		}
	}
}

// barrierEnded reads the announcement of b and, once it is gone, the
// fence (through c, in that order: one session sees ZooKeeper's
// transactions in order, and the raise deletes the announcement in its
// own multi): raised when the fence records b's epoch or later, gone
// when the barrier ended without it. A read that fails is neither.
func (s *Server) barrierEnded(ctx context.Context, c *zkclient.Conn, b fence.Barrier) (raised, gone bool) {
	now, ok, err := fence.ReadBarrier(ctx, c, s.cfg.FencePath)
	if err != nil || ok && now.Epoch == b.Epoch {
		return false, false // still open (perhaps announced again: the same hold goes on)
	}
	rec, err := fence.ReadExisting(ctx, c, s.cfg.FencePath)
	if err != nil {
		return false, false
	}
	if rec.Epoch >= b.Epoch {
		return rec.Epoch == b.Epoch && rec.Primary == b.Primary, rec.Epoch != b.Epoch || rec.Primary != b.Primary
	}
	return false, true
}

// primaryConn lends the fence watcher's session if it is open to primary.
func (s *Server) primaryConn(primary ensemble.Name) *zkclient.Conn {
	s.watcherMu.Lock()
	defer s.watcherMu.Unlock()
	if c := s.watcherConn; c != nil && s.watcherFor == primary && c.Err() == nil {
		return c
	}
	return nil
}
