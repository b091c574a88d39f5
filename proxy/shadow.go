package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// shadow is a client session's shadow session on the secondary ensemble
// (two-ensemble mode): the secondary leg. It is opened with the client's
// negotiated timeout, presents the client's digest credentials, keeps
// itself alive, moves to another server of its ensemble when its server
// dies (resuming the same session id and password), and carries the
// mirrored writes (mirror.go), so that every ephemeral the client creates is
// owned on the secondary by this session.
//
// It outlives the client's connections: a client that reconnects to the
// proxy with its session finds the same shadow. It ends with the client's
// session: closed on the secondary (its ephemerals go) when the client
// closes its session or the proxy expires it; abandoned (it expires on the
// secondary after its timeout) when the proxy stops or no relay has served
// the session for its timeout.
//
// One goroutine (run) owns the connection and the mirror work; it is
// counted in Server.wg and ends with the server's context.
type shadow struct {
	srv     *Server
	leg     *leg  // the secondary leg: its servers, the shadow session's id and password
	key     int64 // the client-facing session id
	timeout time.Duration
	log     *slog.Logger

	mu         sync.Mutex
	owner      int64 // the serving upstream session (owner of the client's ephemerals on the primary): key until a flip
	swapped    bool  // a flip gave the shadow another leg: drop the connection and connect the new one
	auths      []zkclient.Auth
	authsSent  int                 // auths presented on conn
	ephemerals map[string]struct{} // the client's ephemerals, seen on the primary
	queue      mirrorQueue
	intents    map[string]int // paths of client writes sent to the primary whose reply is not processed yet (intend, releaseIntent)
	failPath   string         // the path whose mirror last failed for a lost connection
	fails      int            // its consecutive failures
	relays     int            // relays (client connections) serving the session
	unrelayed  time.Time      // when relays last dropped to 0
	closing    bool           // the client's session ended: drain, then close
	retiring   bool           // the secondary is retired (retire.go): close, keep the client's flip records
	gone       bool           // run is ending: a relay arriving now needs a new shadow
	closeBy    time.Time      // give up draining at this time
	repair     bool           // a repair shadow (mirror_repair.go): mirrors an ended session's leftover paths
	from       *origin        // a repair shadow's paths' origin when not the proxy's roles (restored from --state-dir: mirror_stranded.go)
	handoff    *handoff       // a flip asks for the open connection (session_shadow.go)
	lost       bool           // the secondary expired the session while a flip held: the swap opens a new one (flip_expired.go)
	gate       chan struct{}  // closed once a flip moving the session is done with its old serving connection (flipTo)
	wake       chan struct{}
	done       chan struct{} // closed when run has ended
}

// shadowFor returns the shadow of client session key, starting one when
// the session has none, and counts one more relay serving it.
func (s *Server) shadowFor(key int64, timeout time.Duration) *shadow {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secondaryRetired() {
		return s.retiredShadow(key) // phase 6 retired the secondary (retire.go)
	}
	sh := s.shadows[key]
	if sh != nil {
		sh.mu.Lock()
		if sh.gone {
			sh = nil // ending; its goroutine forgets only itself
		}
		sh.mu.Unlock()
	}
	if sh == nil {
		r := s.roles.Load()
		owner := key
		if id, ok := s.idmap[key]; ok {
			// The client's session is served by another upstream session
			// since a flip: the primary's ephemerals are owned by that one.
			owner = id.id
		}
		sh = &shadow{
			srv: s, leg: newLeg(s, r.primary.Other(), r.secondary), key: key, owner: owner, timeout: timeout,
			log:        s.log.With("session", fmt.Sprintf("0x%x", key)),
			ephemerals: map[string]struct{}{},
			wake:       make(chan struct{}, 1),
			done:       make(chan struct{}),
		}
		sh.leg.timeout = timeout
		if id, pw, ok := s.recordedOnLocked(key, r.primary.Other()); ok {
			sh.leg.id, sh.leg.passwd = id, pw // recorded by this proxy before a restart
		}
		s.shadows[key] = sh
		sh.relays = 1 // before run looks at it
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sh.run()
		}()
		return sh
	}
	sh.mu.Lock()
	sh.relays++
	sh.mu.Unlock()
	return sh
}

// release is called when a relay of the session ends. ended says the
// client's session itself ended (closed by the client or expired by the
// proxy): the shadow then drains its mirror backlog and closes its session
// on the secondary, so the client's ephemerals go from both ensembles.
func (sh *shadow) release(ended bool) {
	sh.mu.Lock()
	sh.relays--
	if sh.relays <= 0 {
		sh.unrelayed = time.Now()
	}
	if ended && !sh.closing {
		sh.closing = true
		sh.closeBy = time.Now().Add(sh.timeout)
	}
	sh.mu.Unlock()
	sh.poke()
}

func (sh *shadow) poke() {
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

// addAuth records a credential the primary accepted for the client and
// presents it on the shadow session.
func (sh *shadow) addAuth(a *jute.AuthPacket) {
	sh.mu.Lock()
	for _, have := range sh.auths {
		if have.Scheme == a.Scheme && bytes.Equal(have.Secret, a.Auth) {
			sh.mu.Unlock()
			return
		}
	}
	sh.auths = append(sh.auths, zkclient.Auth{Scheme: a.Scheme, Secret: append([]byte(nil), a.Auth...)})
	sh.mu.Unlock()
	sh.poke() // the shadow's goroutine presents it before mirroring more
}

// presentAuths presents on c, one at a time, the credentials added since c
// was opened (Dial presented the earlier ones). The primary accepted them,
// so a refusal ends the connection like any failure.
func (sh *shadow) presentAuths(ctx context.Context, c *zkclient.Conn) error {
	for {
		sh.mu.Lock()
		if sh.authsSent >= len(sh.auths) {
			sh.mu.Unlock()
			return nil
		}
		a := sh.auths[sh.authsSent]
		sh.mu.Unlock()
		actx, cancel := context.WithTimeout(ctx, sh.timeout)
		err := c.Do(actx, jute.OpAuth, &jute.AuthPacket{Scheme: a.Scheme, Auth: a.Secret}, nil)
		cancel()
		if err != nil {
			return fmt.Errorf("present credential %s on the shadow session: %w", a.Scheme, err)
		}
		sh.mu.Lock()
		sh.authsSent++
		sh.mu.Unlock()
	}
}

// sessionID is the shadow session's id on the secondary (0 before it opens).
func (sh *shadow) sessionID() int64 {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.leg.id
}

// run connects the shadow session, re-attaches it when its server dies,
// and mirrors the queued paths, until the session ends or the proxy stops.
func (sh *shadow) run() {
	defer close(sh.done)
	defer sh.srv.forgetShadow(sh)
	ctx := sh.srv.ctx
	backoff := 50 * time.Millisecond
	var lastErr error
	for {
		if sh.finished() {
			sh.closeRetired() // retire.go: not left to expire on the retired ensemble
			if sh.closingNotRetiring() {
				// The client's session ended while the secondary was
				// unreachable: not left to expire there either.
				sh.closeLater(err0(lastErr, "the secondary was unreachable when the client's session ended"))
			}
			return
		}
		c, err := sh.connect(ctx)
		lastErr = err
		if errors.Is(err, errSwapped) {
			continue
		}
		if errors.Is(err, errExpiredInHold) {
			sh.srv.logs.warn(sh.log, "shadow_expired_in_hold", "shadow session expired on the secondary while a flip holds; the flip's swap opens a new one there and creates the client's ephemerals again")
			select {
			case <-ctx.Done():
				return
			case <-sh.wake:
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			sh.srv.logs.warn(sh.log, "shadow_connect", "secondary ensemble unreachable: writes wait in the mirror backlog",
				"err", err, "backlog", sh.backlog())
			// New writes do not hurry a reconnect (they only wait in the
			// backlog); a closing session is noticed at the next attempt.
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if sh.serve(ctx, c) {
			return
		}
	}
}

// finished reports whether the shadow should stop before (re)connecting:
// the session was closed and nothing remains to mirror past its deadline,
// or no relay has served the session for its timeout (the client is gone
// without closing it: the session expires on the primary by itself, and
// the shadow is left to expire on the secondary).
func (sh *shadow) finished() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closing && (sh.queue.len() == 0 || time.Now().After(sh.closeBy)) {
		sh.gone = true
	}
	if sh.relays <= 0 && !sh.closing && time.Since(sh.unrelayed) > sh.timeout {
		sh.gone = true
	}
	return sh.gone
}

// connect opens the shadow session, or resumes it on another server.
func (sh *shadow) connect(ctx context.Context) (*zkclient.Conn, error) {
	sh.mu.Lock()
	gate := sh.gate
	sh.mu.Unlock()
	if gate != nil {
		// A flip gave the shadow the session that served the client and
		// still uses its connection (the sync on the old primary, its
		// ephemerals listed): resuming it elsewhere now would move the
		// session from under it.
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	sh.mu.Lock()
	// One shadow session per client: small buffers (mirror writes are
	// few; a large one still goes through) and no watches, so no room for
	// events (64 KiB buffers and 4,096 event slots cost 200 KB a session).
	opts := zkclient.Options{SessionTimeout: sh.timeout, DialTimeout: sh.srv.cfg.DialTimeout, Dial: sh.srv.cfg.Dial,
		SessionID: sh.leg.id, Passwd: sh.leg.passwd, Auth: append([]zkclient.Auth(nil), sh.auths...),
		BufferSize: 4 << 10, EventBuffer: 16}
	resumed := sh.leg.id != 0
	sh.swapped = false
	l := sh.leg
	sh.mu.Unlock()
	c, err := zkclient.Dial(ctx, l.addrs, opts)
	if errors.Is(err, zkclient.ErrExpired) {
		// The secondary expired the shadow session (it was unreachable for
		// longer than the timeout): its ephemerals are gone there. Open a
		// new one and mirror the client's ephemerals again, as a client
		// request does: holding the flip's hold for reading, so a flip
		// drains after the ephemerals are queued (and mirrored), never
		// between. While a flip holds, the mirror could not finish before
		// the swap (the control plane may have raised the fences): the
		// swap itself opens the new session on what becomes the primary
		// and creates the ephemerals there (flip_expired.go); if the hold
		// ends without a swap, the next attempt here does it.
		if !sh.srv.hold.TryRLock() {
			sh.mu.Lock()
			if sh.leg == l {
				sh.lost = true
			}
			sh.mu.Unlock()
			return nil, errExpiredInHold
		}
		defer sh.srv.hold.RUnlock()
		sh.srv.m.mirrorFailures.WithLabelValues("shadow_expired").Inc()
		sh.log.Warn("shadow session expired on the secondary; opening a new one and re-creating the client's ephemerals")
		opts.SessionID, opts.Passwd, resumed = 0, nil, false
		c, err = zkclient.Dial(ctx, l.addrs, opts)
		if err == nil {
			var paths []string
			sh.mu.Lock()
			for p := range sh.ephemerals {
				paths = append(paths, p)
			}
			sh.mu.Unlock()
			sh.mark(paths...)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("shadow session on %s: %w", l.name.Flag(), err)
	}
	sh.mu.Lock()
	if sh.leg != l {
		// A flip gave the shadow another leg while this one connected.
		sh.mu.Unlock()
		c.Abandon()
		return nil, errSwapped
	}
	sh.leg.id, sh.leg.passwd = c.SessionID(), c.Passwd()
	sh.lost = false
	sh.authsSent = len(opts.Auth)
	sh.mu.Unlock()
	if !resumed || !l.marked.Load() {
		// First on a new session (before the ephemerals it mirrors);
		// again on a resumed one whose marker is not known.
		mctx, cancel := context.WithTimeout(ctx, sh.timeout)
		sh.srv.markConn(c, l, sh.log)(mctx)
		cancel()
	}
	if !sh.repair {
		sh.srv.saveShadow(sh.key, c.SessionID(), c.Passwd(), l.name)
	}
	if resumed {
		sh.srv.m.mirrorReattach.Inc()
		sh.log.Info("shadow session re-attached", "upstream", c.Addr())
	} else {
		sh.log.Debug("shadow session opened", "shadow", fmt.Sprintf("0x%x", c.SessionID()), "upstream", c.Addr())
	}
	return c, nil
}

// serve mirrors queued paths on c until c fails (false: reconnect) or the
// shadow ends (true). While idle it probes the server every third of the
// timeout and drops a connection silent for two thirds, as the relay does.
func (sh *shadow) serve(ctx context.Context, c *zkclient.Conn) bool {
	probe := time.NewTicker(max(sh.timeout/3, 20*time.Millisecond))
	defer probe.Stop()
	for {
		if sh.finished() {
			sh.mu.Lock()
			closing := sh.closing
			sh.mu.Unlock()
			if closing {
				if err := closeAcked(c, sh.timeout/2); err != nil { // closeSession: the client's ephemerals go from the secondary
					sh.closeLater(err) // not acknowledged (connection lost): retried on its own
				}
				sh.mu.Lock()
				retiring := sh.retiring
				sh.mu.Unlock()
				switch {
				case retiring && !sh.repair:
					sh.srv.dropShadowFile(sh.key) // the client's session goes on, served by the primary
				case !sh.repair:
					sh.srv.dropShadowState(sh.key)
				}
				sh.log.Debug("shadow session closed with the client's session")
			} else {
				c.Abandon()
				sh.srv.dropShadowState(sh.key) // the client's session expires on the primary too
				sh.log.Debug("no relay serves the session any more; the shadow session is left to expire")
			}
			return true
		}
		if sh.takeSwap() {
			// The session now serves the client, through the relay: its
			// connection goes to the relay if the flip asks for it, else it
			// is dropped (the relay resumes the session on a new one).
			if h := sh.takeHandoff(); h != nil {
				h.give(c)
			} else {
				c.Abandon()
			}
			return false
		}
		if err := sh.presentAuths(ctx, c); err != nil {
			sh.log.Warn("shadow session lost while presenting a credential; re-attaching", "err", err)
			c.Abandon()
			return false
		}
		p, ok := sh.next()
		if !ok {
			select {
			case <-ctx.Done():
				c.Abandon() // the proxy stops: the shadow session expires after its timeout
				return true
			case <-c.Done():
				return false
			case <-sh.wake:
			case <-probe.C:
				pctx, cancel := context.WithTimeout(ctx, sh.timeout*2/3)
				_, err := c.Exists(pctx, "/")
				cancel()
				if err != nil && !isZKCode(err) {
					sh.log.Warn("secondary server silent or gone; moving the shadow session", "upstream", c.Addr(), "err", err)
					c.Abandon()
					return false
				}
			}
			continue
		}
		err := sh.mirror(ctx, c, p)
		sh.done1(p, err)
		if connLost(err) {
			// The connection failed: the path stays queued; re-attach.
			sh.log.Info("mirror interrupted; re-attaching the shadow session", "path", p, "upstream", c.Addr(), "err", err)
			c.Abandon()
			return false
		}
	}
}

// isZKCode reports whether err is an answer from ZooKeeper (as opposed to a
// lost connection or a timeout).
func isZKCode(err error) bool {
	var ze jute.Error
	return errors.As(err, &ze)
}

// forgetShadow removes sh from the server once its goroutine ends.
func (s *Server) forgetShadow(sh *shadow) {
	s.mu.Lock()
	if s.shadows[sh.key] == sh {
		delete(s.shadows, sh.key)
	}
	s.mu.Unlock()
	sh.mu.Lock()
	n := sh.queue.len()
	q := sh.queue
	sh.queue = mirrorQueue{}
	auths := append([]zkclient.Auth(nil), sh.auths...)
	sh.mu.Unlock()
	if n > 0 && s.secondaryRetired() {
		n = 0 // queued by a write racing the retirement: nothing more goes to the retired ensemble
		s.mirrorBacklog.Add(-int64(q.len()))
	}
	if n > 0 && s.handOff(sh, q, auths) {
		s.logs.warn(sh.log, "mirror_handed_off", "session ended with writes not yet mirrored (the secondary is unreachable?); a repair session of the proxy mirrors them when it returns",
			"paths", n, "hint", "bring the secondary back; `zk-migrate validate` shows what differs")
		return
	}
	if n > 0 && s.ctx.Err() != nil && s.cfg.StateDir != "" {
		s.leftAtStop(sh.origin(), q) // recorded in --state-dir: the next run mirrors them
		s.mirrorBacklog.Add(-int64(n))
		s.noteBacklog()
		return
	}
	s.mirrorBacklog.Add(-int64(n))
	if n > 0 {
		s.m.mirrorFailures.WithLabelValues("session_ended").Add(float64(n))
		s.logs.warn(sh.log, "mirror_abandoned", "session ended with writes not yet mirrored; the replicator repairs them",
			"paths", n, "hint", "run `zk-migrate sync` (continuous) beside the proxies, or `zk-migrate validate` to check")
	}
	s.noteBacklog()
}

// ShadowSession reports the shadow session id on the secondary ensemble of
// client session id (two-ensemble mode), for operators and tests.
func (s *Server) ShadowSession(id int64) (int64, bool) {
	s.mu.Lock()
	sh := s.shadows[id]
	s.mu.Unlock()
	if sh == nil {
		return 0, false
	}
	sid := sh.sessionID()
	return sid, sid != 0
}
