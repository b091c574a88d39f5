package proxy

// Test-only views of the proxy's internals (compiled into the package's
// tests only).

// ShadowCredentials returns the id and password of client session id's
// shadow session, so a test can end it from outside as ZooKeeper would.
func (s *Server) ShadowCredentials(id int64) (int64, []byte, bool) {
	s.mu.Lock()
	sh := s.shadows[id]
	s.mu.Unlock()
	if sh == nil {
		return 0, nil, false
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.leg.id, append([]byte(nil), sh.leg.passwd...), sh.leg.id != 0
}

// ServingSession returns the upstream session serving client session id.
func (s *Server) ServingSession(id int64) (int64, bool) {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess == nil {
		return 0, false
	}
	return sess.serving().id, true
}

// ShadowLost reports whether client session id's shadow found its session
// expired while a flip held (flip_expired.go).
func (s *Server) ShadowLost(id int64) bool {
	s.mu.Lock()
	sh := s.shadows[id]
	s.mu.Unlock()
	if sh == nil {
		return false
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.lost
}
