package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Retiring the old ensemble (phase 6, SPEC.md 4.9 "Retiring the
// secondary"): once the flip has made B the primary and the migration
// removes A, the control plane asks every proxy to retire A. The proxy
// stops mirroring to it and closes every shadow session it holds there
// (closeSession: the clients' ephemerals go from A with them; nothing on B
// changes). The clients' sessions, served by B since the flip, go on
// without a pause. From then on no session of the proxy opens a shadow
// on A again, a flip back to A is refused, and with --state-dir the
// retirement survives a restart (<state-dir>/retired).

// ErrRetirePrimary refuses to retire the ensemble that serves the clients.
var ErrRetirePrimary = errors.New("proxy: cannot retire the primary ensemble: its clients are served by it")

// ErrRetired refuses a flip to an ensemble the proxy has retired.
var ErrRetired = errors.New("proxy: the ensemble was retired (phase 6): the proxy no longer mirrors to it and cannot serve from it")

// Retired returns the ensemble this proxy has retired ("" when none).
func (s *Server) Retired() ensemble.Name {
	if p := s.retired.Load(); p != nil {
		return *p
	}
	return ""
}

// secondaryRetired reports whether the secondary ensemble is retired: no
// shadow session, no mirror.
func (s *Server) secondaryRetired() bool { return s.retired.Load() != nil }

// retiredFile is the retirement's record in --state-dir.
func (s *Server) retiredFile() string { return filepath.Join(s.cfg.StateDir, "retired") }

// Retire retires ensemble old (the secondary): it records the retirement
// (in --state-dir when set), stops mirroring to old, closes every shadow
// session there and waits until they have ended or ctx ends. It returns
// how many shadow sessions it closed. Asked again it does nothing more
// (0, nil). It refuses (ErrRetirePrimary) while old serves the clients:
// flip first. A proxy with one ensemble has nothing to retire and says so
// with (0, nil).
func (s *Server) Retire(ctx context.Context, old ensemble.Name) (int, error) {
	if !old.Valid() {
		return 0, fmt.Errorf("retire %q: want %s or %s", old, ensemble.Source, ensemble.Target)
	}
	// No flip meanwhile: the primary checked here stays the primary.
	for !s.flipMu.TryLock() {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("retire %s: a flip is under way: %w", old.Flag(), ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	shadows, again, err := s.markRetired(old)
	s.flipMu.Unlock() // a flip to old is refused from now on (flipNeeded)
	if err != nil || again {
		if err == nil {
			err = s.waitShadowsGone(ctx) // asked again: the first answer may have timed out
		}
		return 0, err
	}
	// Nothing more is mirrored (markACL) and no new shadow opens
	// (shadowFor): what is still queued is dropped; A is being archived.
	dropped := 0
	for _, sh := range shadows {
		sh.mu.Lock()
		n := sh.queue.len()
		sh.queue = mirrorQueue{}
		sh.retiring, sh.closing, sh.closeBy = true, true, time.Now()
		sh.mu.Unlock()
		if n > 0 {
			s.mirrorBacklog.Add(-int64(n))
			dropped += n
		}
		sh.poke()
	}
	s.noteBacklog()
	s.log.Info("retiring the old ensemble: closing every shadow session on it",
		"retired", old.Flag(), "shadows", len(shadows), "mirror_paths_dropped", dropped)
	if err := s.waitShadowsGone(ctx); err != nil {
		return len(shadows), err
	}
	s.closePrimaryReaders() // they served the mirror only
	s.dropStandby(old)      // kept for a flip back, which is refused now
	s.log.Info("old ensemble retired: no shadow session left on it", "retired", old.Flag(), "closed", len(shadows))
	return len(shadows), nil
}

// markRetired checks and records the retirement of old, with flipMu
// held, and returns the shadows to close; again says old was already
// retired.
func (s *Server) markRetired(old ensemble.Name) (shadows []*shadow, again bool, err error) {
	if !s.TwoEnsembles() {
		return nil, true, nil // nothing mirrored to retire; its upstream is whatever --upstream names
	}
	r := s.roles.Load()
	if r.primary == old {
		return nil, false, fmt.Errorf("%w: the proxy serves from %s (epoch %d); flip to %s first", ErrRetirePrimary, old.Flag(), r.epoch, old.Other().Flag())
	}
	if s.Retired() == old {
		return nil, true, nil
	}
	if err := s.saveRetired(old); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retired.Store(&old)
	for _, sh := range s.shadows {
		shadows = append(shadows, sh)
	}
	return shadows, false, nil
}

// waitShadowsGone waits until every shadow's goroutine has ended.
func (s *Server) waitShadowsGone(ctx context.Context) error {
	for {
		s.mu.Lock()
		var sh *shadow
		for _, x := range s.shadows {
			sh = x
			break
		}
		s.mu.Unlock()
		if sh == nil {
			return nil
		}
		select {
		case <-sh.done:
		case <-ctx.Done():
			return fmt.Errorf("retire: shadow session of 0x%x still closing: %w", sh.key, ctx.Err())
		}
	}
}

// closeRetired closes the session of a retired shadow whose goroutine
// ends without a connection (it was re-attaching when the retirement came):
// resumed on a server of the retired ensemble and closed, so its ephemerals
// go now rather than after its timeout. If no server takes it, it expires
// there by itself.
func (sh *shadow) closeRetired() {
	sh.mu.Lock()
	retiring, l := sh.retiring, sh.leg
	id, passwd := l.id, l.passwd
	sh.mu.Unlock()
	if !retiring || id == 0 || sh.srv.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(sh.srv.ctx, sh.timeout)
	defer cancel()
	c, err := zkclient.Dial(ctx, l.addrs, zkclient.Options{SessionTimeout: sh.timeout, DialTimeout: sh.srv.cfg.DialTimeout, Dial: sh.srv.cfg.Dial,
		SessionID: id, Passwd: passwd, BufferSize: 4 << 10, EventBuffer: 16})
	if err != nil {
		sh.log.Warn("retired ensemble: could not close the shadow session; it expires there after its timeout", "err", err, "timeout", sh.timeout)
		return
	}
	if err := closeAcked(c, sh.timeout/2); err != nil {
		sh.log.Warn("retired ensemble: the shadow session's close was not acknowledged; it expires there after its timeout",
			"err", err, "timeout", sh.timeout)
	}
	if !sh.repair {
		sh.srv.dropShadowFile(sh.key)
	}
}

// retiredShadow is the shadow a session gets once the secondary is
// retired: no session, no goroutine, nothing mirrored; its release at the
// end of the client's session forgets the session's flip records.
func (s *Server) retiredShadow(key int64) *shadow {
	r := s.roles.Load()
	sh := &shadow{srv: s, leg: newLeg(s, r.primary.Other(), r.secondary), key: key,
		log: s.log, ephemerals: map[string]struct{}{}, gone: true, retiring: true,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	close(sh.done)
	return sh
}

// saveRetired records the retirement in --state-dir (nothing without it).
func (s *Server) saveRetired(old ensemble.Name) error {
	if s.cfg.StateDir == "" {
		return nil
	}
	f := s.retiredFile()
	err := os.MkdirAll(s.cfg.StateDir, 0o700)
	if err == nil {
		tmp := f + ".tmp"
		if err = os.WriteFile(tmp, []byte(string(old)+"\n"), 0o600); err == nil {
			err = os.Rename(tmp, f)
		}
	}
	if err != nil {
		return fmt.Errorf("retire %s: record it in --state-dir %s: %w (nothing retired; make --state-dir writable by the proxy)", old.Flag(), s.cfg.StateDir, err)
	}
	return nil
}

// loadRetired reads the retirement a previous run recorded. A record
// naming the primary is refused: the proxy would serve from an ensemble
// that was archived.
func (s *Server) loadRetired() error {
	if !s.TwoEnsembles() {
		return nil
	}
	if r := s.cfg.Retired; r != "" && s.TwoEnsembles() {
		if !r.Valid() || r == s.cfg.PrimaryName {
			return fmt.Errorf("proxy: the control plane records ensemble %q as retired by phase 6, and the proxy would serve from it: start it with --primary %s", r, r.Other().Flag())
		}
		s.retired.Store(&r)
		_ = s.saveRetired(r) // best effort: the control plane still advertises it
		_ = os.Remove(s.backlogFile())
		s.log.Info("the control plane records the old ensemble as retired (phase 6): no shadow session is opened on it", "retired", r.Flag())
		return nil
	}
	if s.cfg.StateDir == "" {
		return nil
	}
	b, err := os.ReadFile(s.retiredFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("proxy: read %s: %w", s.retiredFile(), err)
	}
	old := ensemble.Name(strings.TrimSpace(string(b)))
	if !old.Valid() {
		return fmt.Errorf("proxy: %s names %q, not an ensemble (A or B): remove the file only if no migration retired an ensemble", s.retiredFile(), old)
	}
	if old == s.cfg.PrimaryName {
		return fmt.Errorf("proxy: ensemble %s was retired by phase 6 (recorded in %s) but the proxy would serve from it: start it with --primary %s",
			old.Flag(), s.retiredFile(), old.Other().Flag())
	}
	s.retired.Store(&old)
	_ = os.Remove(s.backlogFile()) // nothing more is mirrored to it
	s.log.Info("the old ensemble was retired before the restart: no shadow session is opened on it", "retired", old.Flag())
	return nil
}

// RetireTimeout bounds one retire request's wait for the shadow sessions
// to close when the caller sets no deadline.
const RetireTimeout = 30 * time.Second

// RetireHandler serves POST membership.RetirePath: the control plane's
// phase 6 asking the proxy to retire the old ensemble (Retire). It is
// authenticated as the flip endpoint is (the same bearer token; none
// configured refuses every request, 401). It answers 200 with a
// membership.RetireReply once every shadow session on the old ensemble has
// ended (again for a proxy that already retired it), 409 while the old
// ensemble is the proxy's primary (flip first), 400 for a bad body and 503
// when the shadows did not end in time or the retirement could not be
// recorded. done, if not nil, is called after each success (to advertise
// it in gossip).
func (s *Server) RetireHandler(token string, done func(retired ensemble.Name)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		if !bearerOK(r, token) {
			s.refuseUnauthorized(w, r, "retire", "a retire request", "unauthorized: retiring an ensemble needs the control plane's bearer token (--admin-token-file)")
			return
		}
		var req membership.RetireRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "bad retire request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if !req.Ensemble.Valid() {
			http.Error(w, fmt.Sprintf("bad retire request: ensemble %q: want %s or %s", req.Ensemble, ensemble.Source, ensemble.Target), http.StatusBadRequest)
			return
		}
		ctx := r.Context()
		if _, has := ctx.Deadline(); !has {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, RetireTimeout)
			defer cancel()
		}
		closed, err := s.Retire(ctx, req.Ensemble)
		switch {
		case err == nil:
			if done != nil {
				done(s.Retired())
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(membership.RetireReply{Retired: s.Retired(), Closed: closed})
		case errors.Is(err, ErrRetirePrimary):
			s.log.Warn("retire request refused", "err", err, "migration", req.Migration)
			http.Error(w, err.Error(), http.StatusConflict)
		default:
			s.log.Warn("retire request failed", "err", err, "migration", req.Migration)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
}
