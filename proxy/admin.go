package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
)

// bearerOK reports whether r carries "Authorization: Bearer <token>"
// (compared in constant time); with an empty token nothing is accepted.
func bearerOK(r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return token != "" && ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// refuseUnauthorized answers 401 with msg and logs (rate-limited per
// kind) that what came without the control plane's token.
func (s *Server) refuseUnauthorized(w http.ResponseWriter, r *http.Request, kind, what, msg string) {
	s.logs.warn(s.log, kind+"_unauthorized", "refused "+what+" without the control plane's token",
		"from", r.RemoteAddr, "hint", "the control plane sends the token of --proxy-token-file; start the proxy with --admin-token-file holding the same token")
	http.Error(w, msg, http.StatusUnauthorized)
}

// FlipTimeout bounds one flip request's drain when the caller sets no
// deadline.
const FlipTimeout = 30 * time.Second

// FlipHandler serves POST membership.FlipPath: the control plane's barrier
// request. Every request must carry "Authorization: Bearer <token>"; with
// an empty token every request is refused (401), so a proxy started
// without --admin-token-file can never be flipped by anyone. It answers
// 200 once the flip is done (or the epoch is already held), 409 for an
// older epoch or the same epoch with another primary, 400 for a bad body
// and 503 when the drain did not finish in time (nothing swapped). The
// request's Phase selects a step of the two-phase barrier (barrier.go);
// none asks for the whole flip. done,
// if not nil, is called after each successful flip (to advertise the
// epoch in gossip).
func (s *Server) FlipHandler(token string, done func(epoch int64, primary ensemble.Name)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		if !bearerOK(r, token) {
			s.refuseUnauthorized(w, r, "flip", "a flip request", "unauthorized: a flip needs the control plane's bearer token (--admin-token-file)")
			return
		}
		var req membership.FlipRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad flip request: "+err.Error(), http.StatusBadRequest)
			return
		}
		ctx := r.Context()
		if _, has := ctx.Deadline(); !has {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, FlipTimeout)
			defer cancel()
		}
		var err error
		var budget time.Duration
		switch req.Phase {
		case "":
			err = s.Flip(ctx, req.Epoch, req.Primary)
		case membership.PhaseHold:
			budget, err = s.Hold(ctx, req.Epoch, req.Primary)
		case membership.PhaseSwap:
			err = s.Swap(ctx, req.Epoch, req.Primary)
		case membership.PhaseRelease:
			s.Release(req.Epoch)
		default:
			http.Error(w, "bad flip request: phase "+req.Phase+": want hold, swap, release or none", http.StatusBadRequest)
			return
		}
		epoch, primary := s.Epoch()
		switch {
		case err == nil:
			w.Header().Set("Content-Type", "application/json")
			reply := membership.HoldReply{Epoch: epoch, Primary: primary, BudgetMS: budget.Milliseconds()}
			if m, ok := s.HoldMarker(req.Epoch); ok && req.Phase == membership.PhaseHold {
				reply.Marker = &m
			}
			_ = json.NewEncoder(w).Encode(reply)
			// The answer goes out before done runs: done advertises the
			// epoch in gossip, which may wait seconds for the broadcast, and
			// the control plane's barrier counts every millisecond of a hold.
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			if done != nil && (req.Phase == "" || req.Phase == membership.PhaseSwap) {
				done(epoch, primary)
			}
		case errors.Is(err, ErrStaleEpoch), errors.Is(err, ErrEpochConflict), errors.Is(err, ErrRetired):
			http.Error(w, err.Error(), http.StatusConflict)
		case req.Primary != "" && !req.Primary.Valid():
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			s.log.Warn("flip request failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
}
