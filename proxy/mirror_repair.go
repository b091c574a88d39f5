package proxy

import (
	"fmt"
	"math"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// A client session may end (closed, expired, or its client gone) while the
// secondary is unreachable for longer than the session's timeout: its
// shadow ends with writes still queued. They are not dropped: the queue
// (paths and requested ACLs) is handed to a repair shadow, a proxy-owned
// session on the secondary that presents the ended session's credentials
// (to read the primary as its writer did) and owns no ephemerals of the
// client's (they ended with the session). It keeps trying to reach the
// secondary for repairWindow, mirrors the paths like any shadow, closes
// its session once they are done, and ends (SPEC.md 4.9).

// repairWindow bounds how long a repair shadow waits for the secondary;
// paths still queued after it are counted as session_ended and left to the
// replicator.
const repairWindow = 24 * time.Hour

// repairKeyBase is the first key of repair shadows in Server.shadows: far
// from any ZooKeeper session id (server id 0x80, counter 0).
const repairKeyBase = math.MinInt64 + 1

// handOff moves the queue of sh, a client's shadow that ended with paths
// not yet mirrored, to a new repair shadow. It reports false when the
// proxy is stopping (or sh is a repair shadow itself): the paths are then
// the caller's to count as abandoned.
func (s *Server) handOff(sh *shadow, q mirrorQueue, auths []zkclient.Auth) bool {
	if sh.repair || s.ctx.Err() != nil || s.secondaryRetired() {
		return false
	}
	s.startRepair(fmt.Sprintf("0x%x", sh.key), sh.timeout, q, auths, nil)
	return true
}

// startRepair starts a repair shadow mirroring the paths of q, presenting
// auths, with a session of timeout on the secondary; of names what it
// repairs in its log lines; from is the paths' origin when it is not the
// proxy's roles now (a restored backlog: mirror_stranded.go), else nil.
func (s *Server) startRepair(of string, timeout time.Duration, q mirrorQueue, auths []zkclient.Auth, from *origin) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := repairKeyBase + s.repairSeq
	s.repairSeq++
	r := s.roles.Load()
	rs := &shadow{
		srv: s, leg: newLeg(s, r.primary.Other(), r.secondary), key: key, timeout: timeout, repair: true,
		log:        s.log.With("repair_of", of),
		auths:      auths,
		ephemerals: map[string]struct{}{},
		queue:      q,
		from:       from,
		closing:    true, // close the repair session as soon as the queue is done
		closeBy:    time.Now().Add(repairWindow),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	rs.leg.timeout = timeout
	s.shadows[key] = rs
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		rs.run()
	}()
}
