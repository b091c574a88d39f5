package proxy

import (
	"context"
	"fmt"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The proxy's side of the control plane's two-phase barrier (SPEC.md
// 4.10): Hold holds client requests and drains, and keeps holding after
// it answers; Swap, once every proxy holds and the control plane has
// raised the fences, moves the sessions under the same hold; Release ends
// the hold (after the swaps, or to abort with the old primary kept). A
// hold ends by itself when its budget (a third of the shortest session
// timeout, from the moment it was asked) runs out without a release: the
// clients must not see a silence their library would take for a dead
// server. Before it ends by itself it settles with the control plane
// through its hold marker (fence.Resume): if the fence was raised
// meanwhile, the proxy swaps instead of resuming on the old primary.

// holding is a hold in place for a barrier at epoch.
type holding struct {
	epoch   int64
	primary ensemble.Name
	cur     *roles    // the roles when the hold began
	start   time.Time // when it was asked
	until   time.Time // when it ends by itself
	swapped bool      // under heldMu
	release chan struct{}
	done    chan struct{} // closed once the hold is released
	closed  bool          // release closed, under heldMu
	// marker is the hold marker armed on the old primary through
	// markerConn (fence.Arm); markerConn is nil when it could not be
	// armed (the control plane then raises the fence unconditionally).
	marker      fence.Marker
	markerConn  *zkclient.Conn
	markerOwned bool // markerConn was dialled for the hold (else the fence watcher's)
	// self: the proxy holds itself for an announced barrier that did not
	// hold it (barrier_self.go); the versions it reads at its swap are
	// its own until an agreed peer's settle them.
	self bool
}

// Hold holds client requests and drains for a barrier at epoch towards
// primary, and returns how long the hold lasts unless released. Asked
// again for the same barrier, it answers with what is left. A proxy that
// already holds epoch with primary has nothing to hold (0, nil).
func (s *Server) Hold(ctx context.Context, epoch int64, primary ensemble.Name) (time.Duration, error) {
	return s.holdFor(ctx, epoch, primary, false, nil)
}

// holdFor is Hold; self when the proxy holds itself for an announced
// barrier (then a hold already in place for epoch is left as it is), and
// taken, if not nil, is closed once client requests are held.
func (s *Server) holdFor(ctx context.Context, epoch int64, primary ensemble.Name, self bool, taken chan<- struct{}) (time.Duration, error) {
	h, left, same := s.sameHold(epoch, primary, self)
	if h != nil {
		if same {
			if self {
				return 0, nil // held already (asked by the control plane)
			}
			return left, nil
		}
		if epoch < h.epoch {
			return 0, fmt.Errorf("%w: asked to hold for %d, holding for %d", ErrStaleEpoch, epoch, h.epoch)
		}
		s.Release(h.epoch) // an older barrier's hold, abandoned by its leader
	}
	start := time.Now()
	budget := s.pauseBudget()
	bctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	s.holdAsked.Store(epoch) // a hold being taken: the proxy does not hold itself besides (barrier_self.go)
	defer s.holdAsked.CompareAndSwap(epoch, 0)
	// flipMu stays locked for the whole hold: no other flip meanwhile.
	for !s.flipMu.TryLock() {
		// The proxy held itself for this barrier (or the control plane
		// asked first): that hold is this one.
		if _, left, same := s.sameHold(epoch, primary, self); same {
			if self {
				return 0, nil
			}
			return left, nil
		}
		select {
		case <-bctx.Done():
			return 0, fmt.Errorf("hold for epoch %d: another flip is under way: %w", epoch, bctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	cur, done, err := s.flipNeeded(bctx, epoch, primary)
	if done || err != nil {
		s.flipMu.Unlock()
		return 0, err
	}
	armed := make(chan armResult, 1)
	go func() { armed <- s.armMarker(bctx, cur) }() // beside the drain: no added pause
	if err := s.takeHold(bctx); err != nil {
		s.flipMu.Unlock()
		(<-armed).close()
		return 0, fmt.Errorf("hold for epoch %d: %w (nothing held)", epoch, err)
	}
	if taken != nil {
		close(taken)
	}
	if err := s.drainForFlip(bctx); err != nil {
		s.hold.Unlock()
		s.flipMu.Unlock()
		(<-armed).close()
		return 0, fmt.Errorf("hold for epoch %d: %w (nothing held; serving from %s)", epoch, err, cur.primary.Flag())
	}
	arm := <-armed
	if arm.err != nil {
		s.log.Warn("flip barrier: could not arm this proxy's hold marker; holding without it (the control plane raises the fence unconditionally: if this hold ends first, writes fail until the proxy catches up)",
			"epoch", epoch, "err", arm.err, "hint", "check that the proxy reaches its primary and may write under the fence znode "+s.cfg.FencePath)
	}
	if !self {
		s.askedHold.Store(epoch)
	}
	h = &holding{epoch: epoch, primary: primary, cur: cur, start: start, until: start.Add(budget), self: self,
		release: make(chan struct{}), done: make(chan struct{}), marker: arm.marker, markerConn: arm.conn, markerOwned: arm.owned}
	left = max(time.Until(h.until), 0)
	s.heldMu.Lock()
	s.held = h
	s.heldMu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.keepHold(h)
	}()
	s.log.Info("flip barrier: holding client requests", "epoch", epoch, "primary", primary.Flag(), "drained_after", time.Since(start).Round(time.Microsecond), "budget", budget, "self", self)
	return left, nil
}

// sameHold returns the hold in place, what is left of it and whether it
// is for epoch and primary; a hold the proxy took itself becomes the
// control plane's when it asks for the same one (!self): its swap's
// versions are then the barrier's.
func (s *Server) sameHold(epoch int64, primary ensemble.Name, self bool) (h *holding, left time.Duration, same bool) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	h = s.held
	if h == nil {
		return nil, 0, false
	}
	same = h.epoch == epoch && h.primary == primary
	if same && !self {
		h.self = false
		s.askedHold.Store(epoch)
	}
	return h, max(time.Until(h.until), 0), same // until is extended under heldMu (keepHold)
}

// keepHold owns a hold: it ends it at Release, at its budget, or when the
// server closes.
func (s *Server) keepHold(h *holding) {
	t := time.NewTimer(time.Until(h.until))
	defer t.Stop()
	expired, extended := false, false
	settled := ""
	for {
		select {
		case <-h.release:
		case <-t.C:
			expired = true
		case <-s.ctx.Done():
		}
		s.heldMu.Lock() // a swap in progress finishes first
		if expired && !h.swapped && !h.closed {
			settled = s.settleHold(h, !extended)
			if settled == settleExtend {
				// The flip is committed and its swap on the way: every
				// proxy must read the versions while all of them hold, so
				// this one holds on rather than swap alone and let its
				// clients write while the others read.
				// Half a budget more: the clients' libraries give up on a
				// server silent for 2/3 of the session timeout, and a
				// request held keeps the pings behind it.
				extended, expired = true, false
				h.until = time.Now().Add(s.pauseBudget() / 2)
				s.heldMu.Unlock()
				s.log.Info("flip barrier: the hold's budget ran out after the fence was raised; holding up to half a budget more for the control plane's swap",
					"epoch", h.epoch, "held_for", time.Since(h.start).Round(time.Millisecond))
				t.Reset(time.Until(h.until))
				continue
			}
		}
		break
	}
	if s.held == h {
		s.held = nil
	}
	swapped := h.swapped
	s.heldMu.Unlock()
	if h.markerConn != nil && h.markerOwned {
		_ = h.markerConn.Close()
	}
	if expired {
		s.m.fenced.WithLabelValues("hold_expired").Inc()
		where := h.cur.primary
		if swapped {
			where = h.primary
		}
		s.log.Warn("flip barrier: no release within the hold's budget; resuming by itself", "epoch", h.epoch, "swapped", swapped,
			"serving_from", where.Flag(), "held_for", time.Since(h.start).Round(time.Millisecond), "settled", settled,
			"hint", "the control plane holds this proxy again before it raises the fence; if the old primary was fenced meanwhile, this proxy finds it and moves")
	}
	s.hold.Unlock()
	s.flipMu.Unlock()
	close(h.done)
}

// Swap moves the sessions to primary at epoch under the hold taken for
// that barrier, which stays until Release. Without that hold (it ended by
// itself, or the proxy restarted) it is a one-shot flip: the fences
// already record epoch, so every other proxy is held, swapped or fenced.
func (s *Server) Swap(ctx context.Context, epoch int64, primary ensemble.Name) error {
	return s.swap(ctx, epoch, primary, true)
}

// swap is Swap; asked when the control plane asks it, which makes a hold
// the proxy took itself for the barrier the control plane's
// (barrier_self.go): the swap is then the barrier's.
func (s *Server) swap(ctx context.Context, epoch int64, primary ensemble.Name, asked bool) error {
	s.heldMu.Lock()
	h := s.held
	if h != nil && h.epoch == epoch && h.primary == primary && !h.closed {
		defer s.heldMu.Unlock() // keepHold waits for the swap to end
		if asked && h.self {
			h.self = false
			s.askedHold.Store(epoch)
		}
		if h.swapped {
			return nil
		}
		sctx, cancel := context.WithDeadline(ctx, h.until)
		defer cancel()
		if err := s.swapWith(sctx, epoch, primary, h.cur, h.start, nil, !h.self); err != nil {
			return err
		}
		h.swapped = true
		return nil
	}
	s.heldMu.Unlock()
	if cur := s.roles.Load(); cur.epoch == epoch && cur.primary == primary {
		return nil
	}
	return s.Flip(ctx, epoch, primary)
}

// Release ends the hold for epoch (nothing if there is none): requests
// resume on the primary the proxy serves from now, the new one after a
// swap, the old one after an abort.
func (s *Server) Release(epoch int64) {
	s.heldMu.Lock()
	h := s.held
	if h == nil || h.epoch != epoch {
		s.heldMu.Unlock()
		return
	}
	if !h.closed {
		h.closed = true
		close(h.release)
	}
	s.heldMu.Unlock()
	<-h.done
}

// HoldMarker returns the hold marker of the hold in place for epoch (false
// when there is none, or it could not be armed): the control plane raises
// the old primary's fence only while the marker keeps this version.
func (s *Server) HoldMarker(epoch int64) (fence.Marker, bool) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	if h := s.held; h != nil && h.epoch == epoch && h.markerConn != nil {
		return h.marker, true
	}
	return fence.Marker{}, false
}

// armResult is a hold marker armed on the old primary, with the
// connection that armed it (kept for the settlement at the hold's end).
type armResult struct {
	marker fence.Marker
	conn   *zkclient.Conn
	owned  bool // conn was dialled for this hold: closed with it
	err    error
}

func (a armResult) close() {
	if a.conn != nil && a.owned {
		_ = a.conn.Close()
	}
}

// markerName names this proxy's hold marker.
func (s *Server) markerName() string { return fence.MarkerPath(s.cfg.FencePath, s.cfg.Name) }

// armMarker arms this proxy's hold marker on the primary of cur, through
// the fence watcher's open session when it has one there (no dial while
// the clients wait), else through a session dialled for the hold.
func (s *Server) armMarker(ctx context.Context, cur *roles) armResult {
	s.watcherMu.Lock()
	c, owned := s.watcherConn, false
	if c == nil || s.watcherFor != cur.primary || c.Err() != nil {
		c = nil
	}
	s.watcherMu.Unlock()
	if c == nil {
		var err error
		c, err = zkclient.Dial(ctx, cur.upstream, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial,
			SessionTimeout: max(2*s.pauseBudget(), 4*time.Second)})
		if err != nil {
			return armResult{err: fmt.Errorf("reach the primary %s: %w", cur.primary.Flag(), err)}
		}
		owned = true
	}
	m, err := fence.Arm(ctx, c, s.markerName())
	if err != nil {
		if owned {
			_ = c.Close()
		}
		return armResult{err: err}
	}
	return armResult{marker: m, conn: c, owned: owned}
}

// settleExtend is settleHold's answer when the fence records the hold's
// epoch and the hold may be extended once to wait for the swap.
const settleExtend = "the fence was raised: holding on for the swap"

// settleTimeout bounds the settlement of a hold that ran out: the clients
// wait that much longer at most.
func (s *Server) settleTimeout() time.Duration {
	return min(max(s.pauseBudget()/2, 100*time.Millisecond), 2*time.Second)
}

// settleHold decides, under heldMu and with the clients still held, how
// a hold that ran out ends: it bumps the hold marker on the condition that
// the old primary's fence is still below the hold's epoch (fence.Resume).
// If the fence records the epoch already, the control plane committed
// the flip: the proxy swaps now instead of resuming on a fenced primary.
// It returns what it did, for the log.
func (s *Server) settleHold(h *holding, mayExtend bool) string {
	if h.markerConn == nil {
		return "no marker"
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.settleTimeout())
	defer cancel()
	rec, resumed, err := fence.Resume(ctx, h.markerConn, s.cfg.FencePath, h.marker.Path, h.epoch)
	switch {
	case err != nil:
		return "unknown: " + err.Error()
	case resumed:
		return "resumed on the old primary before the fence was raised"
	case rec.Epoch != h.epoch || rec.Primary != h.primary:
		return fmt.Sprintf("the fence records epoch %d (%s): left to the fence watcher", rec.Epoch, rec.Primary.Flag())
	case mayExtend:
		return settleExtend
	}
	sctx, cancel := context.WithTimeout(s.ctx, max(time.Until(h.until.Add(s.pauseBudget())), s.settleTimeout()))
	defer cancel()
	if err := s.swapWith(sctx, h.epoch, h.primary, h.cur, h.start, nil, !h.self); err != nil {
		s.log.Warn("flip barrier: the fence was raised as this proxy's hold ran out, but the swap failed; the fence watcher retries",
			"epoch", h.epoch, "err", err)
		return "swap failed: " + err.Error()
	}
	h.swapped = true
	return "the fence was raised: swapped"
}
