package proxy

import (
	"fmt"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
)

// Re-opening a session on a primary that is not the one its record names
// (SPEC.md 4.6, 4.10). A flip moves the sessions it finds attached. A
// session no relay held at that moment keeps the identities it had: its
// client's reconnect presents the session that served on the old
// primary, which the new primary calls expired. That happens when the
// client was between connections during the flip, and to every session of
// a proxy killed around a flip: restarted with --state-dir, it comes up
// on the primary the control plane records (the new one if the flip was
// recorded first, the old one otherwise, and then it is flipped, or
// catches up through its fence, before its clients are back). Each record
// says which ensemble its session lives on, so the proxy serves, on the
// primary it has now, the session the client holds there: the shadow
// session, which owns the client's ephemerals on that ensemble. The other
// session becomes the shadow.

// recordedOnLocked returns the upstream session of client session key on
// ensemble n, as the proxy knows it (memory, or --state-dir after a
// restart): the serving session when the identity record puts it on n;
// else the shadow record on n (the newest: a shadow whose session expired
// opened another); else the other session of the identity record. s.mu
// is held.
func (s *Server) recordedOnLocked(key int64, n ensemble.Name) (int64, []byte, bool) {
	m, mok := s.idmap[key]
	if !mok {
		m, mok = s.loadIdentity(key)
	}
	if mok && m.on == n {
		return m.id, m.passwd, true
	}
	if id, pw, on, ok := s.loadShadow(key); ok {
		if on == "" {
			on = s.roles.Load().primary.Other() // an old record: the secondary's
		}
		if on == n && !(mok && id == m.id) {
			return id, pw, true
		}
	}
	if mok && m.on == n.Other() && m.other != 0 {
		return m.other, m.otherPw, true
	}
	return 0, nil, false
}

// resumeOnPrimary finds the session that serves client session key
// (password passwd, last zxid seen lastZxid in its own numbering) on the
// current primary when the proxy's record names another ensemble for it
// (mapped: the identity record found for it, if ok), and maps the client
// to it. It reports false when the session is served where the record
// says (the common case, decided without I/O), or when nothing is known
// of the client's session on the primary: the primary then answers the
// re-open itself.
//
// The client's password is checked first: against the identity record,
// or, for a client still served by its own session id, by re-opening
// that session on the other ensemble (refused: nothing changes). The
// client's zxids are then shifted by lastZxid, so every zxid it sees next
// is above everything it has seen (hard problem 4); the watches it sets
// again carry a relative zxid of 0 on the primary, so ZooKeeper fires
// each one (spurious events, never a missed one). The other session
// becomes the shadow (the in-memory shadow's leg swapped as at a flip, or
// its record rewritten for the shadow opened next): the client's
// ephemerals stay on both ensembles, each owned by the session that holds
// it there.
func (s *session) resumeOnPrimary(key int64, passwd []byte, lastZxid int64, mapped identity, ok bool) (identity, bool) {
	srv := s.srv
	r := srv.roles.Load()
	p := r.primary
	if ok && (mapped.on == p || mapped.on == "") {
		return identity{}, false // served on the primary as recorded
	}
	offID, offPw := key, passwd // the client's session off the primary
	if ok {
		offID, offPw = mapped.id, mapped.passwd
	}
	srv.mu.Lock()
	sh := srv.shadows[key]
	var onID int64
	var onPw []byte
	live := false
	if sh != nil {
		sh.mu.Lock()
		l, gone := sh.leg, sh.gone
		sh.mu.Unlock()
		switch {
		case gone || l == nil:
			sh = nil
		case l.name != p:
			srv.mu.Unlock()
			if !ok {
				return identity{}, false // the shadow is on the secondary: the client's session serves
			}
			sh = nil // a stale record: look for the session on the primary
			srv.mu.Lock()
		case l.id != 0:
			onID, onPw, live = l.id, l.passwd, true
		}
	}
	if !live {
		var found bool
		onID, onPw, found = srv.recordedOnLocked(key, p)
		if !found {
			srv.mu.Unlock()
			return identity{}, false
		}
	}
	srv.mu.Unlock()
	if onID == offID {
		return identity{}, false
	}
	if !ok && !s.passwordHolds(key, passwd, r) {
		return identity{}, false // a wrong password, or the session is gone
	}
	if live {
		ol := newLeg(srv, p.Other(), r.secondary)
		ol.id, ol.passwd, ol.timeout = offID, offPw, sh.timeout
		ol.lastZxid.Store(lastZxid)
		sh.swapTo(ol, onID)
	} else {
		srv.saveShadow(key, offID, offPw, p.Other()) // the shadow opened next resumes it
	}
	m := identity{id: onID, passwd: onPw, client: passwd, zoff: lastZxid, on: p, other: offID, otherPw: offPw}
	srv.mapIdentity(key, m)
	s.log.Info("session re-opened on a primary its record did not name (a flip did not move it: its client was away, or the proxy restarted); now served by its session there",
		"session", fmt.Sprintf("0x%x", key), "primary", p.Flag(), "upstream_session", fmt.Sprintf("0x%x", onID),
		"shadow_session", fmt.Sprintf("0x%x", offID), "zxid_offset", lastZxid)
	return m, true
}

// passwordHolds checks a client's password by re-opening its session, by
// its own id, on the ensemble that is not the primary (the session the
// client was given there).
func (s *session) passwordHolds(key int64, passwd []byte, r *roles) bool {
	ol := newLeg(s.srv, r.primary.Other(), r.secondary)
	probe := s.connect
	// lastZxidSeen 0: the client's last zxid may be in another numbering
	// than this ensemble's, and a server refuses a client "ahead" of it.
	probe.SessionID, probe.Passwd, probe.LastZxidSeen = key, passwd, 0
	up, resp, _, err := ol.dial(s.done, jute.Marshal(&probe), "")
	if err != nil {
		s.log.Warn("cannot check a re-opened session's password on the other ensemble; the primary answers the re-open", "err", err)
		return false
	}
	up.conn.Close()
	return !resp.Expired()
}
