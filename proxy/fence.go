package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Fencing (SPEC.md 4.10, hard problem 7). In two-ensemble mode every
// client write goes to the primary as a multi whose first op checks the
// version of the primary's fence znode (fence.Path) the proxy learned when
// it took its epoch, and every mirror write to the secondary checks the
// secondary's. A flip raises the record on both ensembles (a setData: a
// new version), so a proxy that missed it can no longer commit anything on
// either: its writes fail in ZooKeeper itself, without its cooperation.
// Reads carry no such check: a proxy serves them only under a lease it
// renews by reading its primary's fence every quarter of FenceLease; a
// proxy that cannot renew it (paused, partitioned, or finding a later
// epoch) stops serving within FenceLease of the flip.

// errFenced means a fence refused a write: the proxy holds an older epoch
// than the ensemble records.
var errFenced = errors.New("proxy: the fence refused the write: this proxy holds an older flip epoch than the ensemble records (it missed a flip)")

// xidProxyFence is the xid of the fence check sent before a setACL.
const xidProxyFence int32 = -20

// ReadLease is the longest a proxy that missed a flip may go on serving
// reads from the old primary after the flip (advertised in gossip and on
// the admin endpoint).
func (s *Server) ReadLease() time.Duration { return s.cfg.FenceLease }

// mono is a monotonic clock reading (nanoseconds since the server began).
func (s *Server) mono() int64 { return int64(time.Since(s.started)) }

// leaseValid reports whether the proxy may serve a request now: always in
// one-ensemble mode (it never flips), else while the read lease lasts and
// the version of the primary's fence is known.
func (s *Server) leaseValid() bool {
	if !s.TwoEnsembles() {
		return true
	}
	r := s.roles.Load()
	return r.fenceKnown[r.primary.Index()] && s.mono() < s.leaseUntil.Load()
}

// grantLease extends the lease to FenceLease after from (a mono reading
// taken before the fence read that justified it).
func (s *Server) grantLease(from int64) {
	s.stale.Store(false)
	until := from + int64(s.cfg.FenceLease)
	for old := s.leaseUntil.Load(); until > old && !s.leaseUntil.CompareAndSwap(old, until); old = s.leaseUntil.Load() {
	}
	s.leaseMu.Lock()
	close(s.leaseCh)
	s.leaseCh = make(chan struct{})
	s.leaseMu.Unlock()
}

// revokeLease ends the lease (a write was fenced: the proxy is stale).
func (s *Server) revokeLease() { s.leaseUntil.Store(0) }

// awaitLease waits up to d for a valid lease, asking for a renewal.
func (s *Server) awaitLease(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		if s.stale.Load() {
			// A missed flip is being caught up with: it needs the hold this
			// request holds for reading, so waiting would only delay it.
			return false
		}
		s.leaseMu.Lock()
		ch := s.leaseCh
		s.leaseMu.Unlock()
		if s.leaseValid() {
			return true
		}
		s.pokeFence()
		select {
		case <-ch:
		case <-timer.C:
			return s.leaseValid()
		case <-s.ctx.Done():
			return false
		}
	}
}

// pokeFence asks the fence watcher for a round now.
func (s *Server) pokeFence() {
	select {
	case s.fencePoke <- struct{}{}:
	default:
	}
}

// watchFence renews the read lease every quarter of FenceLease (and when
// poked) until the server closes. It owns its connection to the primary.
func (s *Server) watchFence() {
	var c *zkclient.Conn
	var cFor ensemble.Name
	lend := func(c *zkclient.Conn, n ensemble.Name) {
		s.watcherMu.Lock()
		s.watcherConn, s.watcherFor = c, n
		s.watcherMu.Unlock()
	}
	defer func() {
		lend(nil, "")
		if c != nil {
			_ = c.Close()
		}
	}()
	t := time.NewTicker(max(s.cfg.FenceLease/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		r := s.roles.Load()
		if c != nil && (cFor != r.primary || c.Err() != nil) {
			lend(nil, "")
			_ = c.Close()
			c = nil
		}
		if c == nil {
			ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
			nc, err := zkclient.Dial(ctx, r.upstream, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial, SessionTimeout: max(2*s.cfg.FenceLease, 4*time.Second)})
			cancel()
			if err == nil {
				c, cFor = nc, r.primary
				lend(c, cFor)
			} else if s.ctx.Err() == nil {
				s.logs.warn(s.log, "fence_read", "cannot reach the primary to renew the read lease; requests are refused once it ends",
					"primary", r.primary.Flag(), "err", err, "lease", s.cfg.FenceLease)
			}
		}
		if c != nil {
			if err := s.checkFence(c, r); err != nil && s.ctx.Err() == nil {
				s.logs.warn(s.log, "fence_read", "could not renew the read lease; requests are refused once it ends",
					"primary", r.primary.Flag(), "err", err, "lease", s.cfg.FenceLease)
				if !isZKCode(err) {
					lend(nil, "")
					_ = c.Close()
					c = nil
				}
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.fencePoke:
		}
	}
}

// checkFence reads the primary's fence on c once: the same epoch (or an
// older one) and the version the proxy checks renews the lease; another
// version is learned again; a later epoch means the proxy missed a flip:
// it moves its sessions to the primary the fence records.
func (s *Server) checkFence(c *zkclient.Conn, r *roles) error {
	ctx, cancel := context.WithTimeout(s.ctx, max(s.cfg.FenceLease/2, time.Second))
	defer cancel()
	t0 := s.mono()
	rec, err := s.readFence(ctx, c, r.epoch)
	if err != nil {
		return err
	}
	if s.roles.Load() != r {
		return nil // a flip changed the roles meanwhile: the next round reads again
	}
	switch {
	case rec.Epoch > r.epoch && s.holdingFor(rec.Epoch):
		return nil // the barrier raised it while this proxy holds: its swap follows
	case rec.Epoch > r.epoch:
		return s.missedFlip(rec)
	case onWrongSide(r, rec):
		return s.wrongSide(r, rec)
	case !r.fenceKnown[r.primary.Index()] || rec.Version != r.fence[r.primary.Index()]:
		// First read, or raised to an epoch not above ours (a rollback that
		// found the proxy there): learn the version.
		if !s.learnFence(r, r.primary, rec.Version) {
			return nil // the roles changed meanwhile: the next round reads again
		}
	}
	// A barrier announced beside the fence that does not hold this proxy:
	// it holds itself before the lease lets requests through (barrier_self.go).
	s.noticeBarrier(ctx, c, r, rec)
	s.grantLease(t0)
	return nil
}

// onWrongSide reports whether a fence record names, for the proxy's own
// epoch, another primary than the proxy's: the flip to that epoch made
// the other ensemble primary, and the proxy took the epoch without the
// flip (started with an epoch and primary that never went together).
func onWrongSide(r *roles, rec fence.Record) bool {
	return rec.Epoch == r.epoch && rec.Primary.Valid() && rec.Primary != r.primary
}

// wrongSide moves a proxy onWrongSide to the primary the fence records, as
// a flip it missed: it must not learn the raised fence's version (its
// writes would pass the check on the old primary beside its peers on the
// new one). Its epoch is taken back to the one before, which the flip it
// missed went above.
func (s *Server) wrongSide(r *roles, rec fence.Record) error {
	s.log.Error("this proxy holds the flip epoch of its primary's fence with another primary than the fence records; moving its sessions to the recorded primary",
		"epoch", r.epoch, "primary", r.primary.Flag(), "recorded_primary", rec.Primary.Flag(),
		"hint", "the epoch came from the control plane's gossip or --state-dir while a flip was under way; nothing to do, but report it if it repeats")
	next := *r
	next.epoch = rec.Epoch - 1
	next.fenceKnown = [2]bool{}
	if !s.roles.CompareAndSwap(r, &next) {
		return nil // a flip changed the roles meanwhile: the next round reads again
	}
	return s.missedFlip(rec)
}

// holdingFor reports whether the proxy holds for a barrier at epoch.
func (s *Server) holdingFor(epoch int64) bool {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	return s.held != nil && s.held.epoch == epoch
}

// missedFlip moves the proxy to the epoch and primary its primary's fence
// records: the flip it missed (killed, paused or cut off while the control
// plane flipped the others), done here as a flip of its own.
//
// While another flip holds flipMu (perhaps the one that raised the fence)
// it does nothing: the lease, not renewed by this round, still ends within
// FenceLease of the last renewal, and the next round reads again.
func (s *Server) missedFlip(rec fence.Record) error {
	if !s.flipMu.TryLock() {
		return nil
	}
	defer s.flipMu.Unlock()
	r := s.roles.Load()
	if r.epoch >= rec.Epoch {
		s.pokeFence() // the flip that raised it ended meanwhile: renew the lease
		return nil
	}
	s.revokeLease()
	s.stale.Store(true)
	s.m.fenced.WithLabelValues("stale_epoch").Inc()
	s.log.Warn("this proxy missed a flip: its primary's fence records a later epoch; its writes are refused there. Moving its sessions to the recorded primary",
		"held_epoch", r.epoch, "fence_epoch", rec.Epoch, "recorded_primary", rec.Primary.Flag())
	primary := rec.Primary
	if !primary.Valid() {
		primary = r.primary
	}
	ctx, cancel := context.WithTimeout(s.ctx, FlipTimeout)
	defer cancel()
	if err := s.flipLocked(ctx, rec.Epoch, primary); err != nil {
		return fmt.Errorf("catch up with the flip to epoch %d: %w", rec.Epoch, err)
	}
	s.pokeFence() // renew the lease on the recorded primary
	return nil
}

// readFence reads the fence through c; a proxy past epoch 0 never
// recreates a missing one (fence.ErrMissing).
func (s *Server) readFence(ctx context.Context, c *zkclient.Conn, epoch int64) (fence.Record, error) {
	if epoch == 0 {
		return fence.Read(ctx, c, s.cfg.FencePath)
	}
	return fence.ReadExisting(ctx, c, s.cfg.FencePath)
}

// learnFence records version v of ensemble n's fence in the roles r,
// unless the roles changed since r was loaded.
func (s *Server) learnFence(r *roles, n ensemble.Name, v int32) bool {
	next := *r
	next.fence[n.Index()], next.fenceKnown[n.Index()] = v, true
	return s.roles.CompareAndSwap(r, &next)
}

// secondaryFence returns the version of the secondary's fence the mirror
// checks, reading it through c the first time. A fence recording a later
// epoch than the proxy's is errFenced: the proxy missed a flip, and must
// not learn the version that fences it.
func (sh *shadow) secondaryFence(ctx context.Context, c *zkclient.Conn) (int32, error) {
	s := sh.srv
	for {
		r := s.roles.Load()
		n := r.primary.Other()
		if r.fenceKnown[n.Index()] {
			return r.fence[n.Index()], nil
		}
		rec, err := s.readFence(ctx, c, r.epoch)
		if err != nil {
			return 0, err
		}
		if rec.Epoch > r.epoch || onWrongSide(r, rec) {
			s.pokeFence()
			return 0, errFenced
		}
		if s.learnFence(r, n, rec.Version) {
			return rec.Version, nil
		}
	}
}

// raiseFences raises the fence on both ensembles (through oc on the
// current primary, nc on the next) to epoch and primary (a no-op where the
// control plane has already) and returns their versions by ensemble index. A fence at a later epoch than asked means a later
// flip happened: ErrStaleEpoch.
func (s *Server) raiseFences(ctx context.Context, cur *roles, oc, nc *zkclient.Conn, epoch int64, primary ensemble.Name) ([2]int32, error) {
	var vers [2]int32
	for _, side := range []struct {
		name ensemble.Name
		c    *zkclient.Conn
	}{{cur.primary, oc}, {cur.primary.Other(), nc}} {
		rec, err := fence.Raise(ctx, side.c, s.cfg.FencePath, epoch, primary)
		if err != nil {
			return vers, fmt.Errorf("fence %s at epoch %d: %w", side.name.Flag(), epoch, err)
		}
		if rec.Epoch > epoch {
			return vers, fmt.Errorf("%w: the fence of %s records epoch %d, asked %d", ErrStaleEpoch, side.name.Flag(), rec.Epoch, epoch)
		}
		vers[side.name.Index()] = rec.Version
	}
	return vers, nil
}

// fenceable reports whether op writes and can be sent inside a multi with
// the fence check.
func fenceable(op jute.Op) bool {
	switch op {
	case jute.OpCreate, jute.OpCreate2, jute.OpCreateTTL, jute.OpCreateContainer, jute.OpDelete, jute.OpSetData, jute.OpMulti:
		return true
	}
	return false
}

// wrapFenced makes the request frame of a multi holding the fence check
// (version v) followed by the client's write (or the ops of its multi).
func wrapFenced(h jute.RequestHeader, op jute.Op, body jute.Record, path string, v int32) []byte {
	ops := []jute.MultiOp{fence.Check(path, v)}
	if m, ok := body.(*jute.MultiRequest); ok {
		ops = append(ops, m.Ops...)
	} else {
		ops = append(ops, jute.MultiOp{Header: jute.MultiHeader{Type: int32(op), Err: -1}, Req: body})
	}
	h.Type = int32(jute.OpMulti)
	return reencode(h, &jute.MultiRequest{Ops: ops})
}

// unwrapFenced turns the reply to a wrapped write back into the reply to
// the client's own request; fenced reports that the fence check failed
// (nothing was written).
func unwrapFenced(frame []byte, op jute.Op) (out []byte, fenced bool, err error) {
	rep, err := jute.DecodeReply(frame, jute.OpMulti)
	if err != nil {
		return nil, false, err
	}
	if rep.Body == nil {
		return frame, false, nil // the whole request failed (the session's state): as is
	}
	mr, ok := rep.Body.(*jute.MultiResponse)
	if !ok || len(mr.Results) < 2 {
		return nil, false, fmt.Errorf("a fenced write's reply holds %d results", len(mr.Results))
	}
	if c := mr.Results[0]; c.Header.Type == int32(jute.OpError) && c.Header.Err != 0 {
		return nil, true, nil
	}
	rest := mr.Results[1:]
	out2 := jute.Reply{Header: rep.Header}
	if op == jute.OpMulti {
		out2.Body = &jute.MultiResponse{Results: rest}
	} else if r := rest[0]; r.Header.Type == int32(jute.OpError) {
		out2.Header.Err = r.Header.Err
	} else {
		out2.Body = r.Resp
		if op == jute.OpCreate2 {
			if cr, ok := r.Resp.(*jute.CreateResponse); ok { // never seen: create2 answers with its Stat
				out2.Body = &jute.Create2Response{Path: cr.Path}
			}
		}
	}
	var e jute.Encoder
	jute.EncodeReply(&e, &out2)
	return e.Bytes(), false, nil
}

// fencedWrite is what a session does when a fence refused its write (or
// its lease could not be renewed): the client must see ConnectionLoss, not
// an error code it would not expect, so its connection is closed; the
// proxy looks for the epoch it missed.
func (s *session) fencedWrite(what string) {
	s.srv.m.fenced.WithLabelValues(what).Inc()
	s.srv.revokeLease()
	s.srv.pokeFence()
	msg := "the old primary's fence refused a write: this proxy missed a flip; closing the client's connection (it sees ConnectionLoss) while the proxy learns the new epoch"
	if what == "read" {
		msg = "could not renew the read lease (the primary's fence unreadable or recording a later epoch); closing the client's connection (ConnectionLoss)"
	}
	s.cc.logs.warn(s.log, "fenced_"+what, msg, "lease", s.srv.cfg.FenceLease,
		"hint", "check that this proxy reaches its primary; zkmigrate_proxy_fenced_total counts these; the proxy moves to the recorded primary by itself")
	s.cc.conn.Close()
}

// fenceHolds checks the fence before a write that cannot go inside a
// multi (setACL): one round trip on the session, answered in order.
func (s *session) fenceHolds(v int32) bool {
	ok := make(chan jute.Code, 1)
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xidProxyFence, Type: int32(jute.OpMulti)}).Encode(&e)
	(&jute.MultiRequest{Ops: []jute.MultiOp{fence.Check(s.srv.cfg.FencePath, v)}}).Encode(&e)
	if err := s.forward(pending{xid: xidProxyFence, op: jute.OpMulti, kind: pendingInternal, start: time.Now(), arg: ok}, e.Bytes(), true); err != nil {
		return false
	}
	select {
	case code := <-ok:
		return code == jute.CodeOK
	case <-time.After(max(s.timeout/3, 100*time.Millisecond)):
		return false
	case <-s.done:
		return false
	}
}

// guardWrite applies the fence to a client request in two-ensemble mode:
// a fenceable write is wrapped (wrapped reports it); a setACL is preceded
// by a fence check; a request that finds no valid lease waits for one a
// third of the session timeout. It returns net.ErrClosed after closing the
// client's connection when the request must not go to the primary.
func (s *session) guardWrite(h jute.RequestHeader, op jute.Op, body jute.Record, frame []byte) ([]byte, bool, error) {
	if !s.srv.TwoEnsembles() {
		return frame, false, nil
	}
	if !s.srv.leaseValid() && !s.srv.awaitLease(max(s.timeout/3, 100*time.Millisecond)) {
		s.fencedWrite("read")
		return nil, false, net.ErrClosed
	}
	if touchesFence(body, s.srv.cfg.FencePath) {
		s.cc.logs.warn(s.log, "fence_write_refused", "refused a client write to the fence znode: only the control plane raises it; answered NOAUTH",
			"path", s.srv.cfg.FencePath, "hint", "never write the fence znode; flip with `zk-migrate advance --phase flip`")
		s.answerLocally(h.Xid, op, jute.CodeNoAuth, time.Now())
		return nil, false, errAnswered
	}
	r := s.srv.roles.Load()
	v := r.fence[r.primary.Index()]
	switch {
	case op == jute.OpSetACL:
		if !s.fenceHolds(v) {
			s.fencedWrite("write")
			return nil, false, net.ErrClosed
		}
		return frame, false, nil
	case fenceable(op):
		return wrapFenced(h, op, body, s.srv.cfg.FencePath, v), true, nil
	}
	return frame, false, nil
}

// errAnswered means guardWrite answered the request itself.
var errAnswered = errors.New("proxy: answered by the proxy")

// touchesFence reports whether a write request changes the fence znode.
func touchesFence(body jute.Record, path string) bool {
	one := func(r jute.Record) bool {
		switch b := r.(type) {
		case *jute.CreateRequest:
			return b.Path == path
		case *jute.CreateTTLRequest:
			return b.Path == path
		}
		return false
	}
	if one(body) {
		return true
	}
	if m, ok := body.(*jute.MultiRequest); ok {
		for _, op := range m.Ops {
			if one(op.Req) {
				return true
			}
		}
	}
	for _, p := range mirrorPaths(body) {
		if p == path {
			return true
		}
	}
	return false
}

// fencedMulti runs ops on the secondary through c after the fence check
// of the secondary's version: the mirror's writes. A failed check is
// errFenced.
func (sh *shadow) fencedMulti(ctx context.Context, c *zkclient.Conn, ops ...zkclient.MultiOp) (*jute.MultiResponse, error) {
	v, err := sh.secondaryFence(ctx, c)
	if err != nil {
		return nil, err
	}
	return fenceCheckedMulti(ctx, c, sh.srv.cfg.FencePath, v, ops...)
}

// fenceCheckedMulti runs ops through c in one multi after a check that the
// fence znode at fencePath is at version v: a refused check is errFenced.
func fenceCheckedMulti(ctx context.Context, c *zkclient.Conn, fencePath string, v int32, ops ...zkclient.MultiOp) (*jute.MultiResponse, error) {
	all := append([]zkclient.MultiOp{{Op: jute.OpCheck, Req: &jute.CheckVersionRequest{Path: fencePath, Version: v}}}, ops...)
	call := c.GoMulti(all)
	select {
	case <-call.Done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	i, err := zkclient.MultiErr(call)
	switch {
	case i == 0:
		return nil, errFenced
	case err != nil:
		return nil, err
	}
	return call.Resp.(*jute.MultiResponse), nil
}
