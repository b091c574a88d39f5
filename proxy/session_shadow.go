package proxy

import "time"

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
	s.shadow.release(s.closing.Load() || s.ended.Load())
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
