package proxy

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Server-wide pieces of two-ensemble mode: the connections the mirror reads
// the primary through, the backlog and lag gauges, and the shadow sessions
// kept in --state-dir so a restarted proxy resumes them.

// TwoEnsembles reports whether the server runs in two-ensemble mode.
func (s *Server) TwoEnsembles() bool { return len(s.cfg.Secondary) > 0 }

// primaryReaders are the connections the mirror reads the primary through,
// one per set of credentials (most clients have none, so most sessions
// share one). Each read follows a sync, so it sees every write the primary
// acknowledged before the mirror began.
type primaryReaders struct {
	mu    sync.Mutex
	conns map[string]*zkclient.Conn
}

// maxPrimaryReaders bounds the distinct credential sets with a reader; the
// one evicted beyond it is an arbitrary one (a mirror using it retries).
const maxPrimaryReaders = 64

func credKey(auths []zkclient.Auth) string {
	parts := make([]string, len(auths))
	for i, a := range auths {
		parts[i] = a.Scheme + ":" + hex.EncodeToString(a.Secret)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// primaryReader returns a connection to the primary carrying auths.
func (s *Server) primaryReader(ctx context.Context, auths []zkclient.Auth) (*zkclient.Conn, error) {
	key := credKey(auths)
	r := &s.readers
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.conns[key]; c != nil {
		select {
		case <-c.Done():
			delete(r.conns, key)
		default:
			return c, nil
		}
	}
	c, err := zkclient.Dial(ctx, s.roles.Load().upstream, zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial, Auth: auths})
	if err != nil {
		return nil, fmt.Errorf("mirror: read the primary: %w", err)
	}
	if r.conns == nil {
		r.conns = map[string]*zkclient.Conn{}
	}
	if len(r.conns) >= maxPrimaryReaders {
		for k, old := range r.conns {
			old.Abandon() // its session expires by itself; nothing waits on the network here
			delete(r.conns, k)
			break
		}
	}
	r.conns[key] = c
	return c, nil
}

// dropPrimaryReader forgets a reader whose connection failed.
func (s *Server) dropPrimaryReader(c *zkclient.Conn) {
	r := &s.readers
	r.mu.Lock()
	for k, have := range r.conns {
		if have == c {
			delete(r.conns, k)
		}
	}
	r.mu.Unlock()
	c.Abandon()
}

func (s *Server) closePrimaryReaders() {
	r := &s.readers
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// noteBacklog publishes the mirror backlog.
func (s *Server) noteBacklog() {
	s.backlogGen.Add(1)
	s.m.mirrorBacklog.Set(float64(s.mirrorBacklog.Load()))
}

// watchMirrorLag publishes, four times a second, the age of the oldest
// write not yet mirrored (0 when none waits). It ends with the server.
func (s *Server) watchMirrorLag() {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	saved := s.backlogGen.Load()
	for {
		select {
		case <-s.ctx.Done():
			s.closePrimaryReaders()
			return
		case now := <-t.C:
			var oldest time.Time
			s.mu.Lock()
			shadows := make([]*shadow, 0, len(s.shadows))
			for _, sh := range s.shadows {
				shadows = append(shadows, sh)
			}
			s.mu.Unlock()
			for _, sh := range shadows {
				sh.mu.Lock()
				_, since, ok := sh.queue.peek()
				sh.mu.Unlock()
				if ok && (oldest.IsZero() || since.Before(oldest)) {
					oldest = since
				}
			}
			lag := 0.0
			if !oldest.IsZero() {
				lag = now.Sub(oldest).Seconds()
			}
			s.m.mirrorLag.Set(lag)
			if g := s.backlogGen.Load(); g != saved && s.cfg.StateDir != "" {
				saved = g
				s.saveBacklog(s.pendingPaths)
			}
		}
	}
}

// MirrorBacklog is the number of paths waiting to be mirrored to the
// secondary, over all sessions.
func (s *Server) MirrorBacklog() int { return int(s.mirrorBacklog.Load()) }

// The shadow sessions in --state-dir: one file per client session,
// "shadows/<client session id>", holding the shadow session's id and
// password, so a restarted proxy resumes a reconnecting client's shadow
// session (and its ephemerals on the secondary) instead of opening another.

func (s *Server) shadowFile(key int64) string {
	return filepath.Join(s.cfg.StateDir, "shadows", fmt.Sprintf("%016x", uint64(key)))
}

// saveShadow records the shadow session of client session key, which
// lives on ensemble on: "id password ensemble" (a record of two fields,
// written before the ensemble was kept, is taken as the secondary's).
func (s *Server) saveShadow(key, id int64, passwd []byte, on ensemble.Name) {
	if s.cfg.StateDir == "" {
		return
	}
	f := s.shadowFile(key)
	body := fmt.Sprintf("%016x %s %s\n", uint64(id), hex.EncodeToString(passwd), on)
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err == nil {
		tmp := f + ".tmp"
		if err = os.WriteFile(tmp, []byte(body), 0o600); err == nil {
			err = os.Rename(tmp, f)
		}
		if err == nil {
			return
		}
	}
	s.logs.warn(s.log, "state_dir", "cannot record a shadow session in --state-dir; a restarted proxy would open a new one",
		"dir", s.cfg.StateDir, "hint", "make --state-dir writable by the proxy")
}

// loadShadow returns the shadow session recorded for client session key
// and the ensemble it lives on ("" for an old record).
func (s *Server) loadShadow(key int64) (int64, []byte, ensemble.Name, bool) {
	if s.cfg.StateDir == "" {
		return 0, nil, "", false
	}
	b, err := os.ReadFile(s.shadowFile(key))
	if err != nil {
		return 0, nil, "", false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 && len(f) != 3 {
		return 0, nil, "", false
	}
	id, err1 := strconv.ParseUint(f[0], 16, 64)
	pw, err2 := hex.DecodeString(f[1])
	if err1 != nil || err2 != nil {
		return 0, nil, "", false
	}
	var on ensemble.Name
	if len(f) == 3 {
		if on = ensemble.Name(f[2]); !on.Valid() {
			return 0, nil, "", false
		}
	}
	return int64(id), pw, on, true
}

// dropShadowFile forgets the shadow session's record only: the secondary
// was retired and the client's session goes on (retire.go).
func (s *Server) dropShadowFile(key int64) {
	if s.cfg.StateDir != "" {
		_ = os.Remove(s.shadowFile(key))
	}
}

// dropShadowState forgets the shadow session of a closed client session.
func (s *Server) dropShadowState(key int64) {
	if s.cfg.StateDir != "" {
		_ = os.Remove(s.shadowFile(key))
		_ = os.Remove(s.identityFile(key))
	}
	s.mu.Lock()
	delete(s.idmap, key)
	s.mu.Unlock()
}
