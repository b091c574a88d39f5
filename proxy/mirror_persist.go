package proxy

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The mirror backlog in --state-dir (SPEC.md 4.9): the file
// "mirror-backlog" lists the paths waiting to be mirrored, one a line
// (ZooKeeper paths hold no control characters), over all sessions. It is
// rewritten (a temporary file renamed over it) by the lag watcher at most
// four times a second when the backlog changed, and once more when the
// proxy stops, with the paths its shadows still held. A proxy started with
// the same --state-dir re-queues them on a repair shadow, so a restart
// loses at most the last quarter second of writes (SIGKILL) or none (a
// clean stop). The file holds no credentials: a re-queued path the primary
// refuses to read without them is counted as noauth and left to the
// replicator.

// backlogFile is the mirror backlog's file in --state-dir.
func (s *Server) backlogFile() string { return filepath.Join(s.cfg.StateDir, "mirror-backlog") }

// restoreTimeout is the session timeout of the repair session that
// mirrors a restored backlog.
const restoreTimeout = 10 * time.Second

// pendingPaths lists the paths queued on all shadows.
func (s *Server) pendingPaths() []string {
	s.mu.Lock()
	shadows := make([]*shadow, 0, len(s.shadows))
	for _, sh := range s.shadows {
		shadows = append(shadows, sh)
	}
	s.mu.Unlock()
	var out []string
	for _, sh := range shadows {
		sh.mu.Lock()
		for p := range sh.queue.since {
			out = append(out, p)
		}
		sh.mu.Unlock()
	}
	return out
}

// saveBacklog records paths as the mirror backlog.
func (s *Server) saveBacklog(paths []string) {
	if s.cfg.StateDir == "" {
		return
	}
	sort.Strings(paths)
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(p)
		b.WriteByte('\n')
	}
	f := s.backlogFile()
	err := os.MkdirAll(filepath.Dir(f), 0o700)
	if err == nil {
		tmp := f + ".tmp"
		if err = os.WriteFile(tmp, []byte(b.String()), 0o600); err == nil {
			err = os.Rename(tmp, f)
		}
	}
	if err != nil {
		s.logs.warn(s.log, "state_dir", "cannot record the mirror backlog in --state-dir; a restarted proxy would not mirror it (the replicator must)",
			"dir", s.cfg.StateDir, "err", err, "hint", "make --state-dir writable by the proxy")
	}
}

// restoreBacklog re-queues the mirror backlog a previous run of the proxy
// recorded, on a repair shadow.
func (s *Server) restoreBacklog() {
	if s.cfg.StateDir == "" {
		return
	}
	b, err := os.ReadFile(s.backlogFile())
	if err != nil {
		return
	}
	var q mirrorQueue
	now := time.Now()
	for _, p := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(p, "/") && q.len() < s.cfg.MaxMirrorBacklog && q.add(p, now) {
			s.mirrorBacklog.Add(1)
		}
	}
	if q.len() == 0 {
		return
	}
	s.noteBacklog()
	s.log.Warn("re-queued the mirror backlog recorded by the previous run of the proxy", "paths", q.len(), "file", s.backlogFile())
	s.startRepair("restart", restoreTimeout, q, nil)
}

// leftAtStop records the paths a shadow still held when the proxy
// stopped, for the last rewrite of the backlog file.
func (s *Server) leftAtStop(q mirrorQueue) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range q.since {
		s.stopLeft = append(s.stopLeft, p)
	}
}
