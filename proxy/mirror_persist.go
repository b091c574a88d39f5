package proxy

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// The mirror backlog in --state-dir (SPEC.md 4.9): the file
// "mirror-backlog" lists the paths waiting to be mirrored, one a line
// (ZooKeeper paths hold no control characters), over all sessions, in
// groups, each after a line "# origin EPOCH PRIMARY FENCE": the epoch and
// the primary (A or B) the proxy held when their writes were acknowledged,
// and the version of the then-secondary's fence at that epoch (-1: not
// known). Paths a missed flip stranded (mirror_stranded.go) are listed
// with their own origin. The file is rewritten (a temporary file renamed
// over it) by the lag watcher at most four times a second when the
// backlog changed, and once more when the proxy stops, with the paths its
// shadows still held. A proxy started with the same --state-dir re-queues
// a group of its own epoch and primary on a repair shadow, and strands
// any other (repaired once it holds a later epoch), so a restart loses at
// most the last quarter second of writes (SIGKILL) or none (a clean
// stop), and a flip missed while it was down does not lose them either.
// The file holds no credentials: a re-queued path the primary refuses to
// read without them is counted as noauth and left to the replicator. A
// file of paths without an origin line (an older proxy's) is re-queued
// as the proxy's own epoch.

// backlogFile is the mirror backlog's file in --state-dir.
func (s *Server) backlogFile() string { return filepath.Join(s.cfg.StateDir, "mirror-backlog") }

// restoreTimeout is the session timeout of the repair session that
// mirrors a restored backlog.
const restoreTimeout = 10 * time.Second

// pendingPaths lists the paths queued on all shadows and the stranded
// ones, by origin. The queues are read first: a path leaves a queue for
// the stranded set only after it is in it (done1).
func (s *Server) pendingPaths() map[origin][]string {
	s.mu.Lock()
	shadows := make([]*shadow, 0, len(s.shadows))
	for _, sh := range s.shadows {
		shadows = append(shadows, sh)
	}
	s.mu.Unlock()
	out := map[origin][]string{}
	for _, sh := range shadows {
		o := sh.origin()
		sh.mu.Lock()
		for p := range sh.queue.since {
			out[o] = append(out[o], p)
		}
		for p := range sh.intents { // sent, reply not processed: the primary may have committed it
			if _, queued := sh.queue.since[p]; !queued {
				out[o] = append(out[o], p)
			}
		}
		sh.mu.Unlock()
	}
	for o, ps := range s.strandedByOrigin() {
		out[o] = append(out[o], ps...)
	}
	return out
}

// backlogJournal is the backlog file between two rewrites: a path newly
// queued is appended to it (after an origin line when the origin changed)
// before its write's reply is relayed to the client, so a proxy SIGKILLed
// at any moment has recorded every write it acknowledged and had not
// mirrored. A rewrite (at most four times a second, from a snapshot of the
// queues taken under mu) compacts it to the paths still waiting. The file
// is not synced: it survives the process, not the machine.
type backlogJournal struct {
	mu     sync.Mutex
	f      *os.File // open for appending; nil before the first append after a rewrite
	last   origin   // the origin of f's last group
	headed bool     // f has a group (last is valid)
	// capturing: a rewrite is under way; what is appended meanwhile is
	// kept in since too, and appended to the new file before it replaces
	// the old one (so the rewrite holds mu only to start and to rename:
	// client replies never wait for it to write the whole backlog).
	capturing bool
	since     []byte
}

// writeLocked appends b to the file (and to since while a rewrite is
// under way), with mu held.
func (s *Server) writeLocked(b string) error {
	j := &s.journal
	if j.capturing {
		j.since = append(j.since, b...)
	}
	if err := s.openJournalLocked(); err != nil {
		return err
	}
	_, err := j.f.WriteString(b)
	return err
}

// journalAppend appends paths, acknowledged at origin o, to the backlog
// file.
func (s *Server) journalAppend(o origin, paths []string) {
	if s.cfg.StateDir == "" || len(paths) == 0 {
		return
	}
	j := &s.journal
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	if !j.headed || j.last != o {
		fmt.Fprintf(&b, "# origin %d %s %d\n", o.epoch, o.primary, o.fence)
		j.last, j.headed = o, true
	}
	for _, p := range paths {
		b.WriteString(p)
		b.WriteByte('\n')
	}
	if err := s.writeLocked(b.String()); err != nil {
		s.logs.warn(s.log, "state_dir", "cannot record a write in the mirror backlog in --state-dir; if the proxy dies before it is mirrored, the replicator must repair it",
			"dir", s.cfg.StateDir, "err", err, "hint", "make --state-dir writable by the proxy")
	}
}

// openJournalLocked opens the backlog file for appending if it is not
// (after a rewrite), with the journal's lock held.
func (s *Server) openJournalLocked() error {
	j := &s.journal
	if j.f != nil {
		return nil
	}
	if err := os.MkdirAll(s.cfg.StateDir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(s.backlogFile(), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	j.f = f
	return nil
}

// journalRemove runs remove (which takes p out of its queue) under the
// journal's lock and, when record is set and p was queued, appends "-p"
// (its mirror is verified) to the backlog file: a restarted proxy then
// knows the write reached the secondary. Under the lock, a new write of p
// queued after the removal is appended after the "-p".
func (s *Server) journalRemove(p string, record bool, remove func() (time.Time, bool)) (time.Time, bool) {
	j := &s.journal
	j.mu.Lock()
	defer j.mu.Unlock()
	since, ok := remove()
	if !ok || !record || s.cfg.StateDir == "" {
		return since, ok
	}
	if err := s.writeLocked("-" + p + "\n"); err != nil {
		s.logs.warn(s.log, "state_dir", "cannot record a mirrored write in the mirror backlog in --state-dir; a restarted proxy mirrors it again",
			"dir", s.cfg.StateDir, "err", err, "hint", "make --state-dir writable by the proxy")
	}
	return since, ok
}

// saveBacklog rewrites the backlog file with the paths snapshot returns,
// by origin. What is appended from the moment the snapshot begins is also
// appended to the new file before the rename (capturing): a path queued
// before is in the snapshot, one queued after in the captured lines.
func (s *Server) saveBacklog(snapshot func() map[origin][]string) {
	if s.cfg.StateDir == "" {
		return
	}
	j := &s.journal
	j.mu.Lock()
	j.capturing, j.since = true, nil
	j.headed = false // the captured lines start with their origin
	j.mu.Unlock()
	paths := snapshot()
	origins := make([]origin, 0, len(paths))
	for o := range paths {
		origins = append(origins, o)
	}
	sort.Slice(origins, func(i, j int) bool { return origins[i].epoch < origins[j].epoch })
	var b strings.Builder
	for _, o := range origins {
		ps := paths[o]
		if len(ps) == 0 {
			continue
		}
		fmt.Fprintf(&b, "# origin %d %s %d\n", o.epoch, o.primary, o.fence)
		sort.Strings(ps)
		for _, p := range ps {
			b.WriteString(p)
			b.WriteByte('\n')
		}
	}
	f := s.backlogFile()
	tmp := f + ".tmp"
	err := os.MkdirAll(filepath.Dir(f), 0o700)
	if err == nil {
		err = os.WriteFile(tmp, []byte(b.String()), 0o600)
	}
	j.mu.Lock()
	if err == nil && len(j.since) > 0 {
		var tf *os.File
		if tf, err = os.OpenFile(tmp, os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
			_, err = tf.Write(j.since)
			if cerr := tf.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err == nil {
		err = os.Rename(tmp, f)
	}
	if err == nil && j.f != nil {
		_ = j.f.Close() // the next append opens the new file
		j.f, j.headed = nil, false
	}
	j.capturing, j.since = false, nil
	j.mu.Unlock()
	if err != nil {
		s.logs.warn(s.log, "state_dir", "cannot record the mirror backlog in --state-dir; a restarted proxy would not mirror it (the replicator must)",
			"dir", s.cfg.StateDir, "err", err, "hint", "make --state-dir writable by the proxy")
	}
}

// parseBacklog reads the backlog file's groups: each path under the last
// origin line before it, a line "-PATH" (its mirror verified) dropping it;
// paths before any origin line (an older proxy's file) are under the zero
// origin. The groups are ordered by epoch, each sorted.
func parseBacklog(b []byte) (map[origin][]string, []origin) {
	at := map[string]origin{}
	cur := origin{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 5 && f[0] == "#" && f[1] == "origin" {
			e, err1 := strconv.ParseInt(f[2], 10, 64)
			v, err2 := strconv.ParseInt(f[4], 10, 32)
			if n := ensemble.Name(f[3]); err1 == nil && err2 == nil && n.Valid() {
				cur = origin{epoch: e, primary: n, fence: int32(v)}
			}
			continue
		}
		switch {
		case strings.HasPrefix(line, "/"):
			at[line] = cur
		case strings.HasPrefix(line, "-/"):
			delete(at, line[1:])
		}
	}
	groups := map[origin][]string{}
	for p, o := range at {
		groups[o] = append(groups[o], p)
	}
	order := make([]origin, 0, len(groups))
	for o, ps := range groups {
		sort.Strings(ps)
		order = append(order, o)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].epoch < order[j].epoch })
	return groups, order
}

// restoreBacklog re-queues the mirror backlog a previous run of the proxy
// recorded: the paths of the proxy's own epoch and primary on a repair
// shadow, the others stranded (a flip was missed while the proxy was down).
func (s *Server) restoreBacklog() {
	if s.cfg.StateDir == "" {
		return
	}
	b, err := os.ReadFile(s.backlogFile())
	if err != nil {
		return
	}
	groups, order := parseBacklog(b)
	r := s.roles.Load()
	now := time.Now()
	for _, o := range order {
		if o != (origin{}) && (o.epoch != r.epoch || o.primary != r.primary) {
			for _, p := range groups[o] {
				s.strand(p, o, nil)
			}
			s.log.Warn("restored mirror backlog from another epoch or primary: a flip happened while the proxy was down; its writes are repaired onto the primary under the rule of SPEC.md 4.9",
				"paths", len(groups[o]), "written_at_epoch", o.epoch, "written_on", o.primary.Flag(), "epoch", r.epoch, "primary", r.primary.Flag())
			continue
		}
		var q mirrorQueue
		for _, p := range groups[o] {
			if q.len() < s.cfg.MaxMirrorBacklog && q.add(p, now) {
				s.mirrorBacklog.Add(1)
			}
		}
		if q.len() == 0 {
			continue
		}
		s.noteBacklog()
		s.log.Warn("re-queued the mirror backlog recorded by the previous run of the proxy", "paths", q.len(), "file", s.backlogFile())
		var from *origin
		if o != (origin{}) {
			from = &o
		}
		s.startRepair("restart", restoreTimeout, q, nil, from)
	}
}

// leftAtStop records the paths a shadow still held when the proxy
// stopped, for the last rewrite of the backlog file.
func (s *Server) leftAtStop(from origin, q mirrorQueue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopLeft == nil {
		s.stopLeft = map[origin][]string{}
	}
	for p := range q.since {
		s.stopLeft[from] = append(s.stopLeft[from], p)
	}
}

// backlogAtStop is what the last rewrite of the backlog file records: the
// paths the shadows held when they ended, and the stranded ones.
func (s *Server) backlogAtStop() map[origin][]string {
	out := s.strandedByOrigin()
	s.mu.Lock()
	defer s.mu.Unlock()
	for o, ps := range s.stopLeft {
		out[o] = append(out[o], ps...)
	}
	return out
}
