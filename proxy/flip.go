package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
)

// The flip (SPEC.md 4.10): the proxy's side of the control plane's
// barrier. Server.Flip holds client requests, drains what is in flight and
// the mirror backlog, swaps every session's legs (the shadow session
// serves, the old serving session becomes the shadow), resumes, and only
// then returns.

// roles says which ensemble serves and which is mirrored to, and the flip
// epoch the proxy holds. Replaced as a whole at a flip.
type roles struct {
	primary   ensemble.Name
	upstream  []string // the primary's servers
	secondary []string
	epoch     int64
	// fence holds the version of each ensemble's fence znode (by
	// ensemble index) the proxy's writes check; fenceKnown once read.
	fence      [2]int32
	fenceKnown [2]bool
}

// identity is the upstream session serving a client session whose own id
// is not it (after a flip), and the offset added to that session's zxids
// before the client sees them. on names the ensemble that session lives
// on and other/otherPw the client's session on the other ensemble (the
// shadow's), so a proxy that finds another primary serving than the one
// recorded knows which session to serve (session_resume.go); on is ""
// for a record written before they were kept.
type identity struct {
	id      int64
	passwd  []byte
	client  []byte // the client's password, checked before the mapping is used
	zoff    int64
	on      ensemble.Name
	other   int64
	otherPw []byte
}

// ErrStaleEpoch means a flip request carried an epoch older than the one
// the proxy holds: it comes from a deposed leader or a delayed retry.
var ErrStaleEpoch = errors.New("flip epoch older than the one the proxy holds")

// ErrEpochConflict means a flip request carried the epoch the proxy holds
// but another primary.
var ErrEpochConflict = errors.New("flip epoch already held with another primary")

// Epoch reports the flip epoch the proxy holds and the ensemble it serves
// from.
func (s *Server) Epoch() (int64, ensemble.Name) {
	r := s.roles.Load()
	return r.epoch, r.primary
}

// errSwapped ends a shadow's connect when a flip gave it another leg.
var errSwapped = errors.New("shadow leg swapped by a flip")

// Flip makes primary the serving ensemble at epoch: client requests are
// held (they wait, nothing fails), requests in flight get their replies,
// every shadow's mirror backlog drains, then every session's legs swap and
// requests resume. A repeated request for the epoch held returns nil; an
// older epoch ErrStaleEpoch. If ctx ends before the drain completes,
// nothing is swapped and requests resume on the old primary.
func (s *Server) Flip(ctx context.Context, epoch int64, primary ensemble.Name) error {
	s.flipMu.Lock()
	defer s.flipMu.Unlock()
	return s.flipLocked(ctx, epoch, primary)
}

// flipLocked is Flip with flipMu held: the one-shot flip (hold, drain,
// fence, swap, release in one call).
func (s *Server) flipLocked(ctx context.Context, epoch int64, primary ensemble.Name) error {
	cur, done, err := s.flipNeeded(ctx, epoch, primary)
	if done || err != nil {
		return err
	}
	// Before the hold: a peer that took this epoch in the barrier has the
	// offsets every other proxy uses (view_peers.go).
	peer := s.peerOffsets(ctx, epoch, primary)
	start := time.Now()
	// A held request gets no reply and a client gives up on a server that
	// says nothing for 2/3 of its session timeout: the pause must end well
	// before. If draining and reading versions take longer than a third of
	// the shortest session timeout, nothing is swapped, requests resume and
	// the control plane asks again.
	ctx, cancel := context.WithTimeout(ctx, s.pauseBudget())
	defer cancel()
	if err := s.takeHold(ctx); err != nil {
		return fmt.Errorf("flip to %s at epoch %d: %w (nothing swapped; serving from %s)", primary.Flag(), epoch, err, cur.primary.Flag())
	}
	defer s.hold.Unlock() // new client requests wait until here: the pause
	if err := s.drainForFlip(ctx); err != nil {
		return fmt.Errorf("flip to %s at epoch %d: %w (nothing swapped; serving from %s)", primary.Flag(), epoch, err, cur.primary.Flag())
	}
	return s.swapWith(ctx, epoch, primary, cur, start, peer, peer != nil)
}

// flipNeeded checks a flip request against the roles held: done when
// there is nothing to swap (the epoch held, or a new epoch with the same
// primary, taken here), an error when it must be refused.
func (s *Server) flipNeeded(ctx context.Context, epoch int64, primary ensemble.Name) (cur *roles, done bool, err error) {
	if !primary.Valid() {
		return nil, false, fmt.Errorf("flip: primary %q: want %s or %s", primary, ensemble.Source, ensemble.Target)
	}
	cur = s.roles.Load()
	switch {
	case epoch < cur.epoch:
		return cur, false, fmt.Errorf("%w: asked %d, holding %d", ErrStaleEpoch, epoch, cur.epoch)
	case epoch == cur.epoch && primary == cur.primary:
		return cur, true, nil
	case epoch == cur.epoch:
		return cur, false, fmt.Errorf("%w: epoch %d serves from %s, asked %s", ErrEpochConflict, epoch, cur.primary.Flag(), primary.Flag())
	case primary == cur.primary:
		next := *cur
		next.epoch = epoch
		// The fences may have been raised to this epoch (a rollback that
		// found the proxy already there): their versions are learned again.
		next.fenceKnown = [2]bool{}
		s.roles.Store(&next)
		s.pokeFence()
		return cur, true, nil
	case !s.TwoEnsembles():
		return cur, false, fmt.Errorf("flip to %s: the proxy runs with one ensemble (start it with --source and --target)", primary.Flag())
	case s.Retired() == primary:
		return cur, false, fmt.Errorf("flip to %s at epoch %d: %w (phase 6 ran; %s stays the primary)", primary.Flag(), epoch, ErrRetired, cur.primary.Flag())
	}
	// A swap follows (one-shot, or a barrier's hold): if the standby
	// connection to the new primary is not open, it opens while requests
	// are held and drained, not in the swap.
	s.warmStandby(cur)
	return cur, false, nil
}

// takeHold takes the hold for writing, which holds every new client
// request. Taken by polling, not Lock: a waiting Lock would hold every new
// request behind a session still opening (up to 10 s in an election).
func (s *Server) takeHold(ctx context.Context) error {
	for !s.hold.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("sessions still opening: %w", ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// swapWith makes primary the serving ensemble at epoch, with the hold
// taken and the proxy drained: the fences are raised (a no-op when the
// control plane raised them), versions read, roles switched and every
// session moved. start is when the flip (or the hold) was asked; the
// phases' times since then are logged. It takes peer's version offsets
// (nil: none) where it has them (rebase). agreed says the offsets it reads are the
// barrier's numbering (read under the barrier's hold, or a peer's):
// otherwise the proxy takes an agreed peer's once one answers
// (settleOffsets).
func (s *Server) swapWith(ctx context.Context, epoch int64, primary ensemble.Name, cur *roles, start time.Time, peer map[string]PathOffset, agreed bool) error {
	drained := time.Since(start)
	// One connection to each ensemble reads (or raises) the fences and
	// reads the versions: no session is opened or closed in the pause
	// (flip_conns.go).
	oc, nc, err := s.takeSwapConns(ctx, cur)
	if err != nil {
		return fmt.Errorf("flip to %s at epoch %d: %w (nothing swapped; serving from %s)", primary.Flag(), epoch, err, cur.primary.Flag())
	}
	handed := false
	defer func() {
		if !handed {
			s.putStandby(cur.primary.Other(), nc) // for the next attempt
		}
	}()
	dialed := time.Since(start)
	// Sequential counters first: padding changes the new primary's
	// cversions, whose offsets the version read computes.
	if _, err := s.matchCounters(ctx, oc, nc); err != nil {
		return fmt.Errorf("flip to %s at epoch %d: %w (nothing swapped; serving from %s)", primary.Flag(), epoch, err, cur.primary.Flag())
	}
	prevOff := s.view.offsets() // what a znode re-created at the swap is offset from (flip_expired.go)
	vers, fenced, err := s.readForSwap(ctx, cur, oc, nc, epoch, primary, peer, agreed && peer == nil)
	if err != nil {
		// If a fence records the epoch now (raised by the control plane or
		// here), the old primary refuses this proxy's writes until the flip
		// is repeated (the control plane, or the fence watcher, asks again).
		return fmt.Errorf("flip to %s at epoch %d: %w (nothing swapped; serving from %s, whose writes fail once its fence records epoch %d)", primary.Flag(), epoch, err, cur.primary.Flag(), epoch)
	}
	rebased := time.Since(start)
	// The sessions' moves share what is left of the pause budget (at least
	// swapFloor): a session not moved by then is told to reconnect and
	// finds its session on the new primary (flipTo), so a slow new primary
	// cannot stretch the pause past what the proxy advertises.
	deadline := s.swapDeadline(ctx, start)
	next := &roles{primary: primary, upstream: cur.secondary, secondary: cur.upstream, epoch: epoch, fence: vers, fenceKnown: [2]bool{true, true}}
	s.view.setAgreed(agreed)
	s.roles.Store(next)
	s.grantLease(fenced)
	s.saveVersions() // the translation survives a restart (flip_state.go)
	if !agreed {
		s.settleOffsets()
	}
	// The mirror reads the new primary from now on, through nc; its reader
	// of the old primary (oc) is the standby for the flip back, the
	// others are closed after the pause.
	plain, others := s.handOverReaders(nc)
	handed = true
	if plain != nil {
		s.putStandby(cur.primary, plain)
	}
	defer s.closeLater(others...)
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	// Sessions move in parallel (at most flipParallel at a time; each is
	// the shadow's connection taken over and a zxid probe on it, then a
	// sync on the old primary), all under the hold: the pause grows with
	// sessions/flipParallel round trips, not with sessions.
	var failed, late atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, flipParallel)
	for _, sess := range sessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := sess.flipTo(next, deadline, prevOff); err != nil {
				what := "not_moved_error"
				if errors.Is(err, errSwapDeadline) {
					what = "not_moved_deadline"
					late.Add(1)
				}
				failed.Add(1)
				s.m.flipFaults.WithLabelValues(what).Inc()
				sess.log.Warn("flip: could not move the session to the new primary; closing its connection so the client reconnects and finds its session there", "err", err)
				sess.shutdown("flip failed for this session")
			}
		}()
	}
	wg.Wait()
	if n := late.Load(); n > 0 {
		s.log.Warn("flip: sessions not moved within the pause budget; their clients were told to reconnect (ConnectionLoss) and re-open their sessions on the new primary",
			"sessions", n, "budget", s.pauseBudget(), "hint", "the new primary answered slowly: check its servers' latency (zk-migrate validate, ZooKeeper's mntr) before the next flip")
	}
	s.log.Info("flip done", "epoch", epoch, "primary", primary.Flag(), "sessions", len(sessions), "failed", failed.Load(), "late", late.Load(),
		"pause", time.Since(start).Round(time.Microsecond), "drained_after", drained.Round(time.Microsecond),
		"dialed_after", dialed.Round(time.Microsecond), "versions_read_after", rebased.Round(time.Microsecond))
	return nil
}

// pauseBudget is the longest a flip may hold client requests before the
// swap: a third of the shortest session timeout (10 s without sessions).
func (s *Server) pauseBudget() time.Duration {
	budget := 10 * time.Second
	s.mu.Lock()
	for _, sess := range s.sessions {
		budget = min(budget, sess.timeout/3)
	}
	s.mu.Unlock()
	return max(budget, 50*time.Millisecond)
}

// swapDeadline is when the sessions' moves must be done: the end of the
// pause budget counted from start, when the flip (or its hold) was asked,
// and not past ctx's deadline, but at least a quarter of the budget
// (swapFloorMin at least) from now, so sessions still get a chance to
// move when the drain and the version read used nearly all of it. Held
// requests then wait at most a budget and a quarter (a hold its control
// plane extended, 4.10, a budget and three quarters), below the 2/3 of
// the session timeout after which a client gives up on a server.
func (s *Server) swapDeadline(ctx context.Context, start time.Time) time.Time {
	budget := s.pauseBudget()
	d := start.Add(budget)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	if floor := time.Now().Add(max(budget/4, swapFloorMin)); d.Before(floor) {
		return floor
	}
	return d
}

// swapFloorMin is the least time the sessions' moves get after the
// version read.
const swapFloorMin = 50 * time.Millisecond

// errSwapDeadline: a session's move did not finish by the swap's deadline.
var errSwapDeadline = errors.New("not moved within the pause budget")

// flipParallel bounds the sessions a flip moves at once (each holds a
// goroutine, and a connection being dialed when the shadow's cannot be
// taken over). 128: 300 sessions a proxy
// move in three rounds, not ten (bench/scale: the cutover of 1,500
// sessions on five proxies 3.9 s, 4.9 s with 32; one run each).
const flipParallel = 128

// drainForFlip waits, with client requests held, until no session has a
// request in flight, every shadow session is connected and no write waits
// to be mirrored.
func (s *Server) drainForFlip(ctx context.Context) error {
	for {
		why := s.flipBlocker()
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %s: %w", why, ctx.Err())
		case <-s.ctx.Done():
			return ErrServerClosed
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// flipBlocker says what the flip still waits for ("" for nothing).
func (s *Server) flipBlocker() string {
	if n := s.mirrorBacklog.Load(); n > 0 {
		return fmt.Sprintf("%d paths still being mirrored", n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, sess := range s.sessions {
		sess.omu.Lock()
		busy := sess.queue.hasClient()
		sess.omu.Unlock()
		if busy {
			return fmt.Sprintf("session 0x%x has requests in flight", id)
		}
		if sh := sess.shadow; sh != nil && sh.sessionID() == 0 {
			return fmt.Sprintf("session 0x%x has no shadow session yet", id)
		}
	}
	return ""
}

// flipTo moves the session to the new primary by deadline (else the
// client is told to reconnect, errSwapDeadline); prevOff holds the
// version offsets in force before the flip. The relay takes over the
// shadow session's open connection on next.upstream (or re-attaches the
// shadow session's id and password on a new one), the shadow takes the
// old serving session's identity and mirrors to the old primary, watches
// and credentials are replayed, and the zxid offset is set so the client's
// zxids keep increasing.
func (s *session) flipTo(next *roles, deadline time.Time, prevOff map[string]verOff) error {
	if !s.join() {
		return nil // the relay is ending: nothing to move
	}
	defer s.leave()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	select {
	case <-s.done:
		return nil
	default:
	}
	sh := s.shadow
	old := s.serving()
	sh.mu.Lock()
	nl := sh.leg
	lost := sh.lost // the new primary expired the shadow session (shadow.go)
	sh.mu.Unlock()
	if nl.id == 0 {
		return errors.New("no shadow session to serve from")
	}
	// The old serving session becomes the shadow, mirroring to the old
	// primary; its goroutine drops its connection to the new primary first.
	ol := newLeg(s.srv, old.name, next.secondary)
	ol.id, ol.passwd, ol.timeout = old.id, old.passwd, old.timeout
	ol.lastZxid.Store(old.lastZxid.Load())
	otherID, otherPw := ol.id, ol.passwd // the shadow's goroutine owns ol from here
	// The shadow's goroutine hands its connection over, whose session is
	// the one about to serve (session_shadow.go).
	// The shadow resumes the old serving session only once this move is
	// done with that session's connection (syncOld, listEphemerals).
	gate := make(chan struct{})
	defer close(gate)
	sh.mu.Lock()
	sh.gate = gate
	sh.mu.Unlock()
	var h *handoff
	if lost {
		sh.swapTo(ol, nl.id) // nothing to hand over: the session is gone
	} else {
		h = sh.swapTaking(ol, nl.id)
	}
	// From here the shadow mirrors to the old primary with the old serving
	// session. If this session cannot be attached now (a server of the new
	// primary unreachable), the client is told to reconnect and finds its
	// session there through the identity mapping, recorded first: its
	// zxids shifted by all it has seen, so they keep increasing whatever
	// the new primary's are.
	mapped := func(zoff int64) identity {
		return identity{id: nl.id, passwd: nl.passwd, client: s.passwd, zoff: zoff, on: next.primary, other: otherID, otherPw: otherPw}
	}
	failed := func(err error) error {
		s.srv.mapIdentity(s.id, mapped(old.lastZxid.Load()+s.zoff.Load()))
		return err
	}

	t0 := time.Now()
	nl.addrs = next.upstream
	nl.timeout = s.timeout
	var up *upstream
	var zx int64
	err := fmt.Errorf("shadow session 0x%x: %w", nl.id, errShadowExpired)
	if !lost {
		up, zx, err = s.takeOver(sh, h, nl, deadline)
	}
	attached := time.Since(t0)
	if err != nil && !errors.Is(err, errShadowExpired) {
		s.log.Debug("flip: resuming the shadow session on a new connection", "why", err)
		up, zx, err = s.attachNew(nl, next, deadline)
	}
	if errors.Is(err, errShadowExpired) {
		// Expired on the new primary since the drain: a new session there,
		// with the client's ephemerals created again (flip_expired.go).
		up, zx, err = s.reopenExpired(sh, nl, next, old.id, deadline, prevOff)
	}
	if err != nil {
		if !time.Now().Before(deadline) && !errors.Is(err, errSwapDeadline) {
			err = fmt.Errorf("%w: %w", errSwapDeadline, err)
		}
		return failed(err)
	}
	nl.lastZxid.Store(zx)
	probed := time.Since(t0)
	// What the client has seen, in its own numbering; the new leg's zxids
	// are shifted to continue from there.
	seen := old.lastZxid.Load() + s.zoff.Load()
	s.zoff.Store(seen - zx)

	if ou := old.up.Load(); ou != nil {
		s.syncOld(ou, deadline)
		ou.conn.Close() // its supervisor case sees a stale connection and ignores it
	}
	synced := time.Since(t0)
	s.omu.Lock()
	s.queue.dropInternal() // the old connection's pings will not be answered
	s.omu.Unlock()
	nl.up.Store(up)
	nl.lastSend.Store(time.Now().UnixNano())
	s.legs[next.primary.Index()] = nl
	s.legs[next.primary.Other().Index()] = ol
	s.primary = next.primary
	s.cur.Store(nl)
	s.connect.SessionID, s.connect.Passwd = nl.id, nl.passwd
	s.srv.mapIdentity(s.id, mapped(s.zoff.Load()))
	s.startReader(up)
	// Persistent watches: ZooKeeper fires nothing for changes between the
	// probed zxid and the re-registration; the catch-up of a re-attach
	// (4.5) reports them.
	s.omu.Lock()
	persistent, recursive := sortedKeys(s.watches.persistent), sortedKeys(s.watches.recursive)
	s.omu.Unlock()
	var registered chan int64
	if len(persistent)+len(recursive) > 0 {
		registered = make(chan int64, 1)
	}
	s.replayLocked(up, registered)
	if registered != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.catchUp(persistent, recursive, zx, registered)
		}()
	}
	s.log.Info("session flipped", "primary", next.primary.Flag(), "upstream", up.addr,
		"upstream_session", fmt.Sprintf("0x%x", nl.id), "zxid_offset", s.zoff.Load(),
		"attached_after", attached.Round(time.Microsecond), "probed_after", probed.Round(time.Microsecond),
		"old_synced_after", synced.Round(time.Microsecond), "moved_after", time.Since(t0).Round(time.Microsecond))
	s.saslFlipped() // sasl.go
	return nil
}

// takeOver makes the shadow's handed-over connection the relay's and
// probes the new primary's zxid on it (one round trip: no TCP connect, no
// session resume).
func (s *session) takeOver(sh *shadow, h *handoff, nl *leg, deadline time.Time) (*upstream, int64, error) {
	conn, addr, err := sh.await(h, deadline)
	if err != nil {
		return nil, 0, err
	}
	return probeOn(nl, conn, addr, deadline)
}

// probeOn makes conn (to addr, its session nl's, nothing unanswered on it)
// the leg's relay connection and probes the server's zxid on it, by
// deadline.
func probeOn(nl *leg, conn net.Conn, addr string, deadline time.Time) (*upstream, int64, error) {
	up := nl.upstreamOn(conn, addr)
	up.lastRecv.Store(time.Now().UnixNano())
	if err := up.write(zxidProbe(), true); err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("probe the zxid on the shadow's connection: %w", err)
	}
	zx, err := up.readProbeBy(deadline)
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("probe the zxid on the shadow's connection: %w", err)
	}
	return up, zx, nil
}

// attachNew resumes the shadow session nl on a new connection to the new
// primary and probes its zxid. The probe goes in the same write as the
// ConnectRequest: one round trip for both.
func (s *session) attachNew(nl *leg, next *roles, deadline time.Time) (*upstream, int64, error) {
	connect := s.connect
	connect.SessionID, connect.Passwd, connect.LastZxidSeen = nl.id, nl.passwd, 0
	up, resp, _, err := nl.dialThen(s.done, deadline, jute.Marshal(&connect), "", zxidProbe())
	if err != nil {
		return nil, 0, fmt.Errorf("attach shadow session 0x%x on %s: %w", nl.id, next.primary.Flag(), err)
	}
	if resp.Expired() {
		up.conn.Close()
		return nil, 0, fmt.Errorf("shadow session 0x%x on %s: %w", nl.id, next.primary.Flag(), errShadowExpired)
	}
	zx, err := up.readProbeBy(deadline)
	if err != nil {
		up.conn.Close()
		return nil, 0, fmt.Errorf("read the zxid of %s: %w", next.primary.Flag(), err)
	}
	return up, zx, nil
}

// syncOld makes the old primary's server catch up with its leader and
// waits for the answer on the old connection, whose reader still relays
// watch events. Every change committed on the old primary before the sync
// has then fired its watches to the client (and left the watch set, so it
// is not re-armed); every later one reaches the new primary after the
// zxid probed there (its mirror follows it), so the re-armed watch fires
// for it: each change is delivered once. An old primary that does not
// answer within a third of the session timeout, or by the swap's
// deadline, is given up on.
func (s *session) syncOld(ou *upstream, deadline time.Time) {
	synced := make(chan int64, 1)
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xidProxySync, Type: int32(jute.OpSync)}).Encode(&e)
	(&jute.SyncRequest{Path: "/"}).Encode(&e)
	s.omu.Lock()
	s.queue.push(pending{xid: xidProxySync, op: jute.OpSync, kind: pendingInternal, start: time.Now(), arg: synced})
	s.omu.Unlock()
	if err := ou.write(e.Bytes(), true); err != nil {
		return
	}
	select {
	case <-synced:
	case <-ou.done:
	case <-time.After(min(max(s.timeout/3, 100*time.Millisecond), max(time.Until(deadline), time.Millisecond))):
		s.log.Warn("flip: the old primary did not answer a sync; watch events it had not sent are not delivered from it", "upstream", ou.addr)
	}
}

// xidProxySync is the xid of the sync sent on the old primary at a flip.
const xidProxySync int32 = -19

// zxidProbe is the request whose reply tells a server's last zxid: an
// exists of "/" (its reply header carries the zxid).
func zxidProbe() []byte {
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xidProxyProbe, Type: int32(jute.OpExists)}).Encode(&e)
	(&jute.ExistsRequest{Path: "/"}).Encode(&e)
	return e.Bytes()
}

// readProbeBy reads the reply to zxidProbe, sent behind the ConnectRequest,
// on a connection no reader reads yet, and returns the server's zxid. It
// gives up at deadline (5 s from now at most: a swap's).
func (u *upstream) readProbeBy(deadline time.Time) (int64, error) {
	if limit := time.Now().Add(5 * time.Second); limit.Before(deadline) {
		deadline = limit
	}
	_ = u.conn.SetDeadline(deadline)
	defer func() { _ = u.conn.SetDeadline(time.Time{}) }()
	frame, err := u.fr.Next()
	if err != nil {
		return 0, err
	}
	var h jute.ReplyHeader
	if err := h.Decode(jute.NewDecoder(frame)); err != nil {
		return 0, err
	}
	if h.Xid != xidProxyProbe {
		return 0, fmt.Errorf("unexpected reply xid %d to the zxid probe", h.Xid)
	}
	u.lastRecv.Store(time.Now().UnixNano())
	return h.Zxid, nil
}

// xidProxyProbe is the xid of the exists the proxy sends to learn a new
// primary's zxid at a flip.
const xidProxyProbe int32 = -18

// mapIdentity records that client session id (password m.client) is
// served by upstream session m.id on m.on, with zxid offset m.zoff. A
// session served by its own id with no offset needs no entry.
func (s *Server) mapIdentity(id int64, m identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.id == id && m.zoff == 0 {
		delete(s.idmap, id)
		s.saveIdentity(id, nil)
		return
	}
	s.idmap[id] = m
	s.saveIdentity(id, &m)
}

// identityOf returns the upstream session serving client session id, if it
// is not id itself and the password is the client's.
func (s *Server) identityOf(id int64, passwd []byte) (identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.idmap[id]
	if !ok {
		if m, ok = s.loadIdentity(id); ok {
			s.idmap[id] = m // recorded before a restart
		}
	}
	if !ok || string(m.client) != string(passwd) {
		return identity{}, false
	}
	return m, true
}

// swapTo gives the shadow the old serving session's leg: its goroutine
// drops its connection (whose session now serves the client) and connects
// l, mirroring to the old primary. owner is the new serving session, owner
// of the client's ephemerals on the new primary.
func (sh *shadow) swapTo(l *leg, owner int64) {
	sh.mu.Lock()
	sh.leg = l
	sh.owner = owner
	sh.swapped = true
	sh.lost = false
	sh.authsSent = 0
	sh.mu.Unlock()
	sh.poke()
}

// takeSwap reports (once) that a flip swapped the shadow's leg.
func (sh *shadow) takeSwap() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.swapped
}

// ownerID is the upstream session owning the client's ephemerals on the
// primary.
func (sh *shadow) ownerID() int64 {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.owner
}

// shiftZxid adds off to a reply header's zxid in frame (xid, then zxid at
// bytes 4 to 12); zxids below 1 (-1 on watch events) stay.
func shiftZxid(frame []byte, off int64) {
	if off == 0 || len(frame) < 12 {
		return
	}
	z := int64(0)
	for _, b := range frame[4:12] {
		z = z<<8 | int64(b)
	}
	if z <= 0 {
		return
	}
	z += off
	for i := 11; i >= 4; i-- {
		frame[i] = byte(z)
		z >>= 8
	}
}
