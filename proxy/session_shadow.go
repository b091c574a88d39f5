package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// attachShadow gives the session its shadow session on the secondary
// (two-ensemble mode): the one it had, if the client re-opened its session
// on a new connection, or a new one.
func (s *session) attachShadow() {
	s.shadow = s.srv.shadowFor(s.id, s.timeout)
	s.legs[s.primary.Other().Index()] = s.shadow.leg
	// A flip finds its connection to the secondary open (flip_conns.go).
	s.srv.warmStandby(s.srv.roles.Load())
}

// releaseShadow tells the shadow the relay has ended, and whether the
// client's session ended with it (closed by the client, expired by the
// proxy or by the ensemble): then the shadow session is closed too.
func (s *session) releaseShadow() {
	ended := s.closing.Load() || s.ended.Load()
	s.shadow.release(ended)
	if ended && s.srv.secondaryRetired() {
		s.srv.dropShadowState(s.id) // its shadow closed at the retirement: only its flip records are left
	}
}

// sessionExpired is called when the primary says a client's session has
// expired: its shadow session, if any, is closed.
func (s *Server) sessionExpired(id int64) {
	if !s.TwoEnsembles() {
		return
	}
	s.mu.Lock()
	sh := s.shadows[id]
	s.mu.Unlock()
	if sh != nil {
		sh.mu.Lock()
		if !sh.closing {
			sh.closing = true
			sh.closeBy = time.Now().Add(sh.timeout)
		}
		sh.mu.Unlock()
		sh.poke()
	}
}

// handoff is a flip's request for the shadow's open connection: the
// shadow session is about to serve the client, and the relay takes its
// connection over instead of resuming the session on a new one (no TCP
// connect, no session resume on the new primary in the pause; SPEC.md
// 4.10).
type handoff struct {
	taken bool // under the shadow's mu: its goroutine has it
	done  chan struct{}
	conn  net.Conn
	addr  string
	err   error
}

// handoffWait bounds how long a flip waits for the shadow's goroutine to
// hand its connection over (it is idle after the drain: at once, or after
// its keep-alive read) before resuming the session on a new connection.
const handoffWait = 250 * time.Millisecond

// errNoHandoff: the shadow's goroutine did not take the request in time.
var errNoHandoff = errors.New("the shadow session's connection was not handed over")

// swapTaking is swapTo asking for the connection of the leg the shadow
// gives up.
func (sh *shadow) swapTaking(l *leg, owner int64) *handoff {
	h := &handoff{done: make(chan struct{})}
	sh.mu.Lock()
	sh.handoff = h
	sh.mu.Unlock()
	sh.swapTo(l, owner)
	return h
}

// takeHandoff returns (once) the connection request of a flip.
func (sh *shadow) takeHandoff() *handoff {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	h := sh.handoff
	sh.handoff = nil
	if h != nil {
		h.taken = true
	}
	return h
}

// give hands c's connection over (its session stays open), or drops it.
func (h *handoff) give(c *zkclient.Conn) {
	h.addr = c.Addr()
	h.conn, h.err = c.Detach()
	if h.err != nil {
		c.Abandon()
	}
	close(h.done)
}

// await returns the handed-over connection and its server, or an error
// (then the caller resumes the session on a new connection). It waits
// handoffWait at most, and not past the swap's deadline.
func (sh *shadow) await(h *handoff, deadline time.Time) (net.Conn, string, error) {
	t := time.NewTimer(min(handoffWait, time.Until(deadline)))
	defer t.Stop()
	select {
	case <-h.done:
	case <-t.C:
		sh.mu.Lock()
		taken := h.taken
		if !taken && sh.handoff == h {
			sh.handoff = nil
		}
		sh.mu.Unlock()
		if !taken {
			return nil, "", errNoHandoff
		}
		<-h.done // Detach does not wait on the network
	}
	return h.conn, h.addr, h.err
}

// shadowCloseCap bounds, in session timeouts past the client's close, how
// long closeLater keeps trying to close a shadow session while the
// secondary stays unreachable.
const shadowCloseCap = 4

// closeLater closes, from a goroutine of its own, the shadow session the
// shadow could not close when the client's session ended (the secondary
// was unreachable, or its connection was lost during closeSession; why
// says which). Left to expire, the session would keep the client's
// ephemerals on the secondary for its timeout, counted from the
// secondary's return if its quorum was lost: a replicator would then take
// them for a bypassing client's ephemerals and copy them to the primary
// (SPEC.md 4.9). It re-attaches with the session's id and password on any
// server of the secondary as soon as one answers and sends closeSession,
// until that succeeds, the server says the session is gone, or the
// session must have expired there anyway: its timeout has passed since
// the last attempt that found the secondary unreachable, and at most
// shadowCloseCap timeouts since the close. The goroutine is counted in
// Server.wg and ends with the server's context.
func (sh *shadow) closeLater(why error) {
	s := sh.srv
	sh.mu.Lock()
	l, id, passwd, auths := sh.leg, sh.leg.id, sh.leg.passwd, append([]zkclient.Auth(nil), sh.auths...)
	closeBy := sh.closeBy
	sh.mu.Unlock()
	if id == 0 || s.ctx.Err() != nil {
		return // never opened (nothing owned on the secondary), or the proxy stops
	}
	if closeBy.IsZero() {
		closeBy = time.Now().Add(sh.timeout)
	}
	s.m.mirrorFailures.WithLabelValues("shadow_close_retried").Inc()
	s.logs.warn(sh.log, "shadow_close_retry", "could not close the shadow session on the secondary with the client's session; closing it as soon as a server of the secondary answers",
		"shadow", fmt.Sprintf("0x%x", id), "secondary", l.name.Flag(), "err", why, "timeout", sh.timeout,
		"hint", "bring the secondary back; until it is closed or expired the client's ephemerals stay there")
	s.wg.Add(1) // run, counted in wg, is still running: no race with Wait
	go func() {
		defer s.wg.Done()
		s.closeUntil(lostClose{log: sh.log, what: "shadow session", addrs: l.addrs, name: l.name.Flag(), id: id, passwd: passwd,
			auths: auths, timeout: sh.timeout, closeBy: closeBy})
	}()
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// closingNotRetiring reports whether the shadow ends with the client's
// session (not with a retirement, which closeRetired handles).
func (sh *shadow) closingNotRetiring() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.closing && !sh.retiring
}

// err0 returns err, or an error saying what when err is nil.
func err0(err error, what string) error {
	if err != nil {
		return err
	}
	return errors.New(what)
}
