package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
)

// mirrorQueue is a shadow's set of paths waiting to be mirrored, in the
// order they were first queued; a path queued again before it is mirrored
// is mirrored once (its state, not each write, is what is copied).
type mirrorQueue struct {
	order []string
	since map[string]time.Time
	head  int
	// acl is the ACL the latest write of a queued path requested, when
	// that write was a setACL or a create (mirror_acl.go).
	acl map[string][]jute.ACL
	// busy is the path being mirrored (from next to done1), again whether
	// it was written again meanwhile: the mirror's last read of the
	// primary may precede that write, so the path is mirrored once more.
	busy  string
	again bool
}

func (q *mirrorQueue) len() int { return len(q.since) }

// add queues p; it reports false when p was queued already.
func (q *mirrorQueue) add(p string, now time.Time) bool {
	if q.since == nil {
		q.since = map[string]time.Time{}
	}
	if _, ok := q.since[p]; ok {
		if p == q.busy {
			q.again = true
		}
		return false
	}
	q.since[p] = now
	q.order = append(q.order, p)
	return true
}

// setACL records acl as the latest requested ACL of the queued p (nil: the
// latest write of p requested none).
func (q *mirrorQueue) setACL(p string, acl []jute.ACL) {
	if acl == nil {
		delete(q.acl, p)
		return
	}
	if q.acl == nil {
		q.acl = map[string][]jute.ACL{}
	}
	q.acl[p] = acl
}

// peek returns the oldest queued path without removing it.
func (q *mirrorQueue) peek() (string, time.Time, bool) {
	for q.head < len(q.order) {
		p := q.order[q.head]
		if t, ok := q.since[p]; ok {
			return p, t, true
		}
		q.head++ // removed meanwhile
	}
	q.order, q.head = q.order[:0], 0
	return "", time.Time{}, false
}

func (q *mirrorQueue) remove(p string) {
	delete(q.since, p)
	delete(q.acl, p)
	if q.head > 1024 && q.head*2 > len(q.order) {
		q.order = append(q.order[:0], q.order[q.head:]...)
		q.head = 0
	}
}

// mark queues paths the primary has just changed for the client. It never
// blocks: the secondary is never in the primary's way. Beyond
// MaxMirrorBacklog paths over all sessions a path is not queued; it is
// counted and left to the replicator, loudly.
func (sh *shadow) mark(paths ...string) { sh.markACL(nil, paths...) }

// markACL is mark for a write that requested acl for the paths (a setACL
// or a create; nil for any other write): the latest requested ACL of a
// queued path is kept beside it.
func (sh *shadow) markACL(acl []jute.ACL, paths ...string) {
	if sh.srv.secondaryRetired() {
		return // phase 6 retired the secondary: nothing is mirrored to it (retire.go)
	}
	now := time.Now()
	added := 0
	sh.mu.Lock()
	if sh.gone {
		sh.mu.Unlock()
		sh.srv.m.mirrorFailures.WithLabelValues("session_ended").Add(float64(len(paths)))
		return
	}
	for _, p := range paths {
		if sh.srv.mirrorBacklog.Load() >= int64(sh.srv.cfg.MaxMirrorBacklog) {
			sh.mu.Unlock()
			sh.srv.m.mirrorFailures.WithLabelValues("backlog_full").Inc()
			sh.srv.logs.warn(sh.log, "mirror_backlog_full", "mirror backlog full: a write was not queued for the secondary; the replicator must repair it",
				"path", p, "max_mirror_backlog", sh.srv.cfg.MaxMirrorBacklog,
				"hint", "is the secondary ensemble down? run `zk-migrate sync` beside the proxies, or raise --max-mirror-backlog")
			sh.mu.Lock()
			continue
		}
		if sh.queue.add(p, now) {
			sh.srv.mirrorBacklog.Add(1)
			added++
		}
		sh.queue.setACL(p, acl)
	}
	sh.mu.Unlock()
	if added > 0 {
		// Recorded in --state-dir before the client's reply is relayed
		// (the caller relays it next): a SIGKILL loses no acknowledged write.
		sh.srv.journalAppend(sh.origin(), paths)
		sh.srv.noteBacklog()
		sh.poke()
	}
}

// next returns the oldest queued path (it stays queued until done1).
func (sh *shadow) next() (string, bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p, _, ok := sh.queue.peek()
	sh.queue.busy, sh.queue.again = p, false
	return p, ok
}

// done1 records the outcome of mirroring p. A path whose mirror failed for
// a lost connection stays queued; any other outcome removes it (a failure
// is counted and logged: the replicator repairs what the proxy could not).
func (sh *shadow) done1(p string, err error) {
	m := sh.srv.m
	sh.mu.Lock()
	if connLost(err) {
		sh.queue.busy, sh.queue.again = "", false
		// A lost connection: the path stays queued, unless it keeps
		// failing (a path that cannot be read must not block the session's
		// mirror for good).
		if sh.failPath != p {
			sh.failPath, sh.fails = p, 0
		}
		if sh.fails++; sh.fails < maxPathFailures {
			sh.mu.Unlock()
			return
		}
		err = fmt.Errorf("after %d attempts: %w", sh.fails, err)
	}
	sh.failPath, sh.fails = "", 0
	_, queued := sh.queue.since[p]
	sh.mu.Unlock()
	fenced := queued && errors.Is(err, errFenced)
	if fenced {
		// A flip this proxy missed raised the secondary's fence: the write
		// was acknowledged, so it is kept until the proxy has caught up,
		// then repaired onto the new primary (mirror_stranded.go).
		// Stranded before it leaves the queue, so a rewrite of the backlog
		// file (queues read first) never misses it.
		sh.srv.strand(p, sh.origin(), sh.authsCopy())
	}
	again := false
	since, ok := sh.srv.journalRemove(p, !fenced, func() (time.Time, bool) {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		q := &sh.queue
		again = err == nil && q.again && q.busy == p
		q.busy, q.again = "", false
		if again {
			// Written again while it was mirrored: mirrored once more,
			// from the back of the queue.
			if q.head < len(q.order) && q.order[q.head] == p {
				q.head++
			}
			q.order = append(q.order, p)
			return time.Time{}, false
		}
		since, ok := q.since[p]
		if ok {
			q.remove(p)
		}
		return since, ok
	})
	if again {
		m.mirrored.Inc()
		return
	}
	if !ok {
		return
	}
	sh.srv.mirrorBacklog.Add(-1)
	sh.srv.noteBacklog()
	if err == nil {
		m.mirrored.Inc()
		m.mirrorDelay.Observe(time.Since(since).Seconds())
		return
	}
	if fenced {
		m.fenced.WithLabelValues("mirror").Inc()
		sh.srv.pokeFence() // learn the epoch this proxy missed
		sh.srv.logs.warn(sh.log, "mirror_stranded", "the secondary's fence refused a mirror write: this proxy missed a flip; the write is kept and repaired onto the new primary once the proxy has caught up",
			"path", p, "hint", "nothing to do; zkmigrate_proxy_mirror_failures_total{reason=\"flip_conflict\"} counts writes the new primary changed since")
		return
	}
	reason := "error"
	switch {
	case errors.Is(err, errMirrorGaveUp):
		reason = "not_converged"
	case jute.CodeOf(err) == jute.CodeNoAuth:
		reason = "noauth"
	case errors.Is(err, errACLHidden):
		reason = "acl_hidden"
	case errors.Is(err, errACLApplied):
		reason = "noauth_acl_applied"
	case errors.Is(err, errACLOpen):
		reason = "noauth_acl_open"
	}
	if reason == "noauth_acl_open" {
		m.mirrorFailures.WithLabelValues(reason).Inc()
		sh.srv.logs.warn(sh.log, "mirror_acl_open", "SECURITY: the secondary keeps a MORE PERMISSIVE ACL than the client set on the primary, and the proxy could not tighten it",
			"path", p, "err", err, "hint", "set the ACL on the secondary by hand now (setAcl "+p+" on the secondary ensemble), then run `zk-migrate sync` beside the proxies")
		return
	}
	m.mirrorFailures.WithLabelValues(reason).Inc()
	sh.srv.logs.warn(sh.log, "mirror_failed", "could not mirror a write to the secondary; the replicator repairs it",
		"path", p, "reason", reason, "err", err, "hint", "run `zk-migrate sync` beside the proxies; `zk-migrate validate` shows what differs")
}

// connLost reports whether a mirror ended in err for a lost connection (or
// a timeout), not for an answer of the ensembles: the path is retried.
func connLost(err error) bool {
	return err != nil && !isZKCode(err) && !errors.Is(err, errMirrorGaveUp) && !errors.Is(err, errACLApplied) && !errors.Is(err, errFenced)
}

// origin is where the writes queued on sh were acknowledged: the
// proxy's roles now (a flip drains every queue before it swaps), or the
// origin recorded with a restored backlog.
func (sh *shadow) origin() origin {
	sh.mu.Lock()
	from := sh.from
	sh.mu.Unlock()
	if from != nil {
		return *from
	}
	return originOf(sh.srv.roles.Load())
}

// intend records in the backlog file, before the write is sent to the
// primary, the paths a client's write request names (a sequential
// create's name is the primary's to choose: it is recorded when the reply
// names it). A proxy SIGKILLed after the primary committed the write and
// before it read the reply (the client sees ConnectionLoss: an unknown
// outcome) then mirrors the path after its restart, as any recorded path
// (its state is compared: nothing is written if the write did not
// happen).
//
// The paths stay intended until the reply is processed (releaseIntent): a
// rewrite of the file (saveBacklog) keeps them, or a rewrite between the
// send and the reply dropped the only record of a write the primary may
// have committed (TestBacklogFileHoldsAWriteInFlight).
func (sh *shadow) intend(body jute.Record) {
	if sh.srv.cfg.StateDir == "" || sh.srv.secondaryRetired() {
		return
	}
	paths := requestPaths(body)
	sh.mu.Lock()
	if sh.intents == nil {
		sh.intents = map[string]int{}
	}
	for _, p := range paths {
		sh.intents[p]++
	}
	sh.mu.Unlock()
	sh.srv.journalAppend(sh.origin(), paths)
}

// releaseIntent ends intend's record of a request whose reply was processed
// (its written paths are queued by then) or that was never sent.
func (sh *shadow) releaseIntent(body jute.Record) {
	if body == nil || sh.srv.cfg.StateDir == "" {
		return // nothing was intended (intend records only with --state-dir)
	}
	paths := requestPaths(body)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, p := range paths {
		if n, ok := sh.intents[p]; ok {
			if n <= 1 {
				delete(sh.intents, p)
			} else {
				sh.intents[p] = n - 1
			}
		}
	}
}

// requestPaths lists the paths a write request names: those it changes
// (mirrorPaths) and those it creates, but a sequential create's (the
// primary chooses the name).
func requestPaths(body jute.Record) []string {
	paths := mirrorPaths(body)
	create := func(r jute.Record) {
		switch c := r.(type) {
		case *jute.CreateRequest:
			if c.Flags != jute.FlagPersistentSequential && c.Flags != jute.FlagEphemeralSequential && c.Flags != jute.FlagPersistentSequentialWithTTL {
				paths = append(paths, c.Path)
			}
		case *jute.CreateTTLRequest:
			if c.Flags != jute.FlagPersistentSequentialWithTTL {
				paths = append(paths, c.Path)
			}
		}
	}
	create(body)
	if m, ok := body.(*jute.MultiRequest); ok {
		for _, op := range m.Ops {
			create(op.Req)
		}
	}
	return paths
}

// markInFlight queues the paths of the client writes in flight in q, whose
// replies were lost with their server: their outcome is unknown (the
// client is told ConnectionLoss), but the primary may have committed
// them, so their paths are mirrored (the state is compared: nothing is
// written if they did not happen). Called with the session's omu held.
func (sh *shadow) markInFlight(q *pendingQueue) {
	var paths []string
	for i := q.head; i < len(q.items); i++ {
		if p := &q.items[i]; p.kind == pendingClient && mirrored(p.op) && p.body != nil {
			paths = append(paths, requestPaths(p.body)...)
		}
	}
	if len(paths) > 0 {
		sh.mark(paths...)
	}
	for i := q.head; i < len(q.items); i++ {
		if p := &q.items[i]; p.kind == pendingClient && mirrored(p.op) {
			sh.releaseIntent(p.body)
		}
	}
}
