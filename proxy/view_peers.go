package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// A proxy that missed a flip takes its peers' version offsets (SPEC.md
// 4.10). The barrier's proxies read both ensembles' versions while every
// proxy holds, so their offsets agree. A proxy that missed the barrier
// (partitioned, paused) catches up later with a one-shot flip, when a
// path's versions on the two ensembles have moved apart (the mirror writes
// the secondary once per pass, not once per client write; the demo
// measured a drift of several versions a second): offsets read then
// would number the versions differently from its peers' (a version
// acknowledged twice or never across proxies, a conditional write judged
// against another numbering). So the one-shot flip first asks a peer that
// holds the epoch for its offsets (Config.PeerOffsets), and reads its own
// only for the paths no peer was shown.

// peerOffsetsWait bounds the one-shot flip's question to its peers (asked
// before the hold: clients do not wait for it).
const peerOffsetsWait = time.Second

// PathOffset is a path's version offsets at a flip (subtracted from the
// serving ensemble's version, cversion and aversion), for the znode
// created at Czxid on the serving ensemble (0 with no offset).
type PathOffset struct {
	V     int32 `json:"v,omitempty"`
	C     int32 `json:"c,omitempty"`
	A     int32 `json:"a,omitempty"`
	Czxid int64 `json:"czxid,omitempty"`
}

// Offsets is what GET /admin/v1/versions answers: the epoch and primary
// the proxy serves and, for every path its clients have been shown, its
// offsets (zero ones too: a peer reading them knows the path has none).
type Offsets struct {
	Epoch   int64         `json:"epoch"`
	Primary ensemble.Name `json:"primary"`
	// Agreed is true when the offsets are the barrier's numbering for the
	// epoch: read while every proxy held, or taken from a peer whose
	// offsets were; false while a flip (a barrier's hold) is under way.
	// A proxy that read its own outside the barrier (a one-shot flip no
	// peer answered) is not agreed: a peer catching up must not take its
	// numbering, and it takes an agreed peer's once one answers
	// (settleOffsets).
	Agreed bool                  `json:"agreed"`
	Paths  map[string]PathOffset `json:"paths"`
}

// VersionOffsets returns the proxy's version offsets and the epoch they
// belong to.
func (s *Server) VersionOffsets() Offsets {
	// Agreed only with no flip under way: a flip puts its offsets in force
	// before its roles, so meanwhile the offsets may be the next epoch's
	// (a peer asking for the epoch held would take them for it).
	settled := s.flipMu.TryLock()
	if settled {
		defer s.flipMu.Unlock()
	}
	// Roles first: a flip stores the offsets before the roles, so offsets
	// newer than the epoch read are possible, older ones are not.
	r := s.roles.Load()
	out := Offsets{Epoch: r.epoch, Primary: r.primary, Paths: map[string]PathOffset{}}
	v := &s.view
	v.mu.RLock()
	defer v.mu.RUnlock()
	out.Agreed = v.agreed && settled
	for p := range v.seen {
		out.Paths[p] = PathOffset{}
	}
	for p, o := range v.off {
		out.Paths[p] = PathOffset{V: o.v, C: o.c, A: o.a, Czxid: o.czxid}
	}
	return out
}

// OffsetsHandler serves GET /admin/v1/versions (VersionOffsets) to a
// bearer of token (the admin token: the peers share it).
func (s *Server) OffsetsHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !bearerOK(r, token) {
			http.Error(w, "unauthorized: the version offsets need the admin bearer token (--admin-token-file)", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.VersionOffsets())
	})
}

// peerOffsets asks Config.PeerOffsets for a peer's offsets at epoch and
// primary; nil when there is none (the flip reads its own).
func (s *Server) peerOffsets(ctx context.Context, epoch int64, primary ensemble.Name) map[string]PathOffset {
	if s.cfg.PeerOffsets == nil || !s.view.on {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, peerOffsetsWait)
	defer cancel()
	o, err := s.cfg.PeerOffsets(ctx, epoch, primary)
	if err != nil {
		s.log.Info("flip: no peer's version offsets for this epoch; reading both ensembles' versions (the numbering may differ from the peers' by the versions the ensembles drifted since their flip)",
			"epoch", epoch, "primary", primary.Flag(), "err", err)
		return nil
	}
	s.log.Info("flip: taking a peer's version offsets for this epoch (the numbering its clients see)", "epoch", epoch, "primary", primary.Flag(), "paths", len(o))
	return o
}

// adopt is the offset rebase keeps for a path shown to this proxy's
// clients: the peer's when it was shown the path too (and, for a
// non-zero one, the same znode: czxid on the new primary), else own.
func adopt(peer map[string]PathOffset, path string, newCzxid int64, own verOff) verOff {
	o, ok := peer[path]
	switch {
	case !ok:
		return own
	case o == PathOffset{}:
		return verOff{}
	case o.Czxid == newCzxid:
		return verOff{v: o.V, c: o.C, a: o.A, czxid: o.Czxid}
	}
	return own
}

// settleWindow bounds how long a proxy whose offsets are not the
// barrier's numbering (settleOffsets) asks its peers for theirs, every
// settleEvery.
const (
	settleWindow = 60 * time.Second
	settleEvery  = 500 * time.Millisecond
)

// settleOffsets makes a proxy whose offsets for the epoch it holds are
// its own reading (a one-shot flip or a start no agreed peer answered: a
// proxy restarted while a flip ran, SPEC.md 4.10) take an agreed peer's
// as soon as one answers (settleLoop).
func (s *Server) settleOffsets() {
	select {
	case s.view.settle <- struct{}{}:
	default:
	}
}

// settleLoop, owned by the server until it stops, settles the offsets
// when asked (settleOffsets): its own reading was made when the
// ensembles' versions may have drifted since the barrier read them (one
// version off in the demo), or without the paths the peers' clients were
// shown. Until a peer answers its clients may see another numbering than
// the peers' (a WARN says how many paths changed when it settles). It
// asks every settleEvery, for settleWindow from the last request, at the
// epoch and primary held then.
func (s *Server) settleLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.view.settle:
		}
		until := time.Now().Add(settleWindow)
		for !s.settleOnce() {
			select {
			case <-s.ctx.Done():
				return
			case <-s.view.settle: // another flip not agreed: its epoch now
				until = time.Now().Add(settleWindow)
			case <-time.After(settleEvery):
			}
			if time.Now().After(until) {
				r := s.roles.Load()
				s.log.Info("no peer answered with the barrier's version offsets for this epoch; keeping this proxy's own reading", "epoch", r.epoch, "primary", r.primary.Flag(), "waited", settleWindow)
				break
			}
		}
	}
}

// settleOnce asks the peers for the offsets at the epoch held and takes
// them; true when there is nothing more to do (agreed, or stopping).
func (s *Server) settleOnce() bool {
	if s.ctx.Err() != nil {
		return true
	}
	s.view.mu.RLock()
	agreed := s.view.agreed
	s.view.mu.RUnlock()
	r := s.roles.Load()
	if agreed || r.epoch == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(s.ctx, peerOffsetsWait)
	peer, err := s.cfg.PeerOffsets(ctx, r.epoch, r.primary)
	cancel()
	if err != nil {
		return false
	}
	if !s.lockFlipMu() {
		return true
	}
	if now := s.roles.Load(); now.epoch != r.epoch || now.primary != r.primary {
		s.flipMu.Unlock()
		return false // a flip meanwhile: ask again for its epoch
	}
	changed := s.view.takePeer(peer)
	s.saveVersions()
	s.flipMu.Unlock()
	if changed > 0 {
		s.logs.warn(s.log, "versions_settled", "took a peer's version offsets for this epoch: this proxy had read its own outside the flip barrier (it restarted or missed the barrier), and its clients may have been shown another numbering meanwhile",
			"epoch", r.epoch, "primary", r.primary.Flag(), "paths_changed", changed,
			"hint", "a conditional write with a version read through this proxy since its flip may get BADVERSION; the client reads again")
	} else {
		s.log.Info("a peer's version offsets for this epoch agree with this proxy's", "epoch", r.epoch, "primary", r.primary.Flag())
	}
	return true
}

// takePeer puts peer's offsets in force for every path it lists (zero
// ones too: the peer's clients see that znode's own versions), keeping
// this proxy's for the paths the peer was not shown, and marks the view
// agreed. It returns how many paths' offsets changed.
func (v *view) takePeer(peer map[string]PathOffset) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	next := make(map[string]verOff, len(v.off))
	for p, o := range v.off {
		next[p] = o
	}
	if v.seen == nil {
		v.seen = map[string]struct{}{}
	}
	changed := 0
	for p, po := range peer {
		o := verOff{v: po.V, c: po.C, a: po.A, czxid: po.Czxid}
		if o == (verOff{}) {
			if _, ok := next[p]; ok {
				delete(next, p)
				changed++
			}
			continue
		}
		if _, own := v.seen[p]; !own {
			if len(v.seen) >= maxStatPaths {
				continue
			}
			v.seen[p] = struct{}{}
		}
		if next[p] != o {
			next[p] = o
			changed++
		}
	}
	v.off = next // replaced as a whole: offsets() callers keep theirs
	v.agreed = true
	return changed
}
