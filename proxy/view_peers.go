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
	Epoch   int64                 `json:"epoch"`
	Primary ensemble.Name         `json:"primary"`
	Paths   map[string]PathOffset `json:"paths"`
}

// VersionOffsets returns the proxy's version offsets and the epoch they
// belong to.
func (s *Server) VersionOffsets() Offsets {
	// Roles first: a flip stores the offsets before the roles, so offsets
	// newer than the epoch read are possible, older ones are not.
	r := s.roles.Load()
	out := Offsets{Epoch: r.epoch, Primary: r.primary, Paths: map[string]PathOffset{}}
	v := &s.view
	v.mu.RLock()
	defer v.mu.RUnlock()
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
