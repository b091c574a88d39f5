package proxy

import (
	"sort"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Stranded writes (SPEC.md 4.9, "A write stranded by a missed flip"). A
// path queued for the mirror was written on the primary the proxy held
// then, at the epoch it held. If a flip the proxy missed (it was killed,
// paused or cut off) made the secondary primary before the path was
// mirrored, the mirror's write meets the secondary's raised fence. The
// write was acknowledged: it is not dropped. The path is kept here,
// tagged with its origin, until the proxy has caught up with the flip;
// then the old primary's state is repaired onto the new primary under the
// rule of mirror_flipped.go, which never overwrites a change made there
// after the flip (that is reported instead). The set survives a restart
// in the backlog file (mirror_persist.go).

// origin is where a queued write was acknowledged: the epoch and the
// primary the proxy held, and the version of the then-secondary's fence
// at that epoch (-1: not known), whose next version marks the flip that
// made it primary (mirror_flipped.go).
type origin struct {
	epoch   int64
	primary ensemble.Name
	fence   int32
}

// originOf is the origin of a write acknowledged under roles r.
func originOf(r *roles) origin {
	o := origin{epoch: r.epoch, primary: r.primary, fence: -1}
	if sec := r.primary.Other(); r.fenceKnown[sec.Index()] {
		o.fence = r.fence[sec.Index()]
	}
	return o
}

// strandedPath is one stranded path: its origin, when it was stranded,
// and the credentials of the session that wrote it (nil when restored
// from --state-dir, which holds none).
type strandedPath struct {
	from  origin
	since time.Time
	auths []zkclient.Auth
}

// strandSet is the server's stranded paths, by path.
type strandSet struct {
	mu    sync.Mutex
	paths map[string]strandedPath
	busy  map[string]strandedPath // taken for repair: still recorded in the backlog file
	wake  chan struct{}
}

// strand keeps p, whose mirror the secondary's fence refused, until the
// proxy holds an epoch past from.
func (s *Server) strand(p string, from origin, auths []zkclient.Auth) {
	st := &s.stranded
	st.mu.Lock()
	if st.paths == nil {
		st.paths = map[string]strandedPath{}
	}
	if old, ok := st.paths[p]; !ok || old.from.epoch < from.epoch {
		st.paths[p] = strandedPath{from: from, since: time.Now(), auths: auths}
	}
	st.mu.Unlock()
	s.m.mirrorFailures.WithLabelValues("stranded").Inc()
	s.noteBacklog() // recorded in --state-dir with the backlog
	s.pokeStranded()
}

func (s *Server) pokeStranded() {
	select {
	case s.stranded.wake <- struct{}{}:
	default:
	}
}

// strandedCount is the number of stranded paths.
func (s *Server) strandedCount() int {
	s.stranded.mu.Lock()
	defer s.stranded.mu.Unlock()
	return len(s.stranded.paths) + len(s.stranded.busy)
}

// strandedByOrigin lists the stranded paths by origin, each list sorted.
func (s *Server) strandedByOrigin() map[origin][]string {
	st := &s.stranded
	st.mu.Lock()
	defer st.mu.Unlock()
	out := map[origin][]string{}
	for _, m := range []map[string]strandedPath{st.paths, st.busy} {
		for p, e := range m {
			out[e.from] = append(out[e.from], p)
		}
	}
	for _, ps := range out {
		sort.Strings(ps)
	}
	return out
}

// takeStranded removes and returns, sorted by path (parents first), the
// stranded paths the proxy can act on under roles r: those from an epoch
// before r's.
func (s *Server) takeStranded(r *roles) []strandItem {
	st := &s.stranded
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []strandItem
	if st.busy == nil {
		st.busy = map[string]strandedPath{}
	}
	for p, e := range st.paths {
		if e.from.epoch < r.epoch {
			out = append(out, strandItem{path: p, strandedPath: e})
			delete(st.paths, p)
			st.busy[p] = e
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}

// restrand ends a repair pass: items the proxy could not act on yet are
// stranded again, the others forgotten (repaired, reported, or queued on
// a repair shadow, which records them itself).
func (s *Server) restrand(items []strandItem) {
	// Recorded again: a rewrite of the backlog file whose snapshot read
	// the queues before they were queued there and the stranded set after
	// it was cleared captures these lines.
	for _, it := range items {
		s.journalAppend(it.from, []string{it.path})
	}
	st := &s.stranded
	st.mu.Lock()
	st.busy = nil
	if st.paths == nil {
		st.paths = map[string]strandedPath{}
	}
	for _, it := range items {
		if _, ok := st.paths[it.path]; !ok {
			st.paths[it.path] = it.strandedPath
		}
	}
	st.mu.Unlock()
	s.noteBacklog()
}

// strandItem is a stranded path taken for repair.
type strandItem struct {
	path string
	strandedPath
}

// strandedRetry is how often stranded paths are looked at without a poke:
// a flip the proxy catches up with changes its roles without telling the
// mirror.
const strandedRetry = 250 * time.Millisecond

// watchStranded repairs stranded paths once the proxy holds a later epoch
// than theirs, until the server closes. It is counted in Server.wg.
func (s *Server) watchStranded() {
	t := time.NewTicker(strandedRetry)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.stranded.wake:
		}
		if s.strandedCount() == 0 || s.secondaryRetired() {
			continue
		}
		r := s.roles.Load()
		items := s.takeStranded(r)
		if len(items) == 0 {
			continue
		}
		var again []strandItem
		var renormal []strandItem
		var flipped []strandItem
		for _, it := range items {
			switch {
			case it.from.primary == r.primary:
				// The write's primary is primary again (a later flip back):
				// its state there is the one to mirror, as for any write.
				renormal = append(renormal, it)
			case it.from.primary.Other() == r.primary:
				flipped = append(flipped, it)
			default:
				again = append(again, it)
			}
		}
		if len(renormal) > 0 {
			s.requeueStranded(renormal)
		}
		if len(flipped) > 0 {
			again = append(again, s.repairFlipped(r, flipped)...)
		}
		s.restrand(again)
		s.noteBacklog()
	}
}

// requeueStranded queues items on repair shadows (one per credential
// set) for the ordinary mirror from the primary they were written on,
// primary again.
func (s *Server) requeueStranded(items []strandItem) {
	groups := map[string][]strandItem{}
	for _, it := range items {
		k := credKey(it.auths)
		groups[k] = append(groups[k], it)
	}
	now := time.Now()
	for _, g := range groups {
		var q mirrorQueue
		for _, it := range g {
			if q.add(it.path, now) {
				s.mirrorBacklog.Add(1)
			}
		}
		s.startRepair("stranded", restoreTimeout, q, g[0].auths, nil)
		var ps []string
		for _, it := range g {
			ps = append(ps, it.path)
		}
		s.journalAppend(originOf(s.roles.Load()), ps) // as restrand does
	}
}
