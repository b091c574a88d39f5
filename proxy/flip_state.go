package proxy

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The identity mapping of flipped sessions (4.6) in --state-dir, so a
// proxy restarted after a flip attaches a reconnecting client to the
// session that serves it (and translates its zxids as before) instead of
// presenting its original id to the new primary, which would answer
// "expired". One file per client session, sessions/<id>, removed with the
// session's shadow record.

func (s *Server) identityFile(key int64) string {
	return filepath.Join(s.cfg.StateDir, "sessions", fmt.Sprintf("%016x", uint64(key)))
}

// saveIdentity records m for client session key (nothing without
// --state-dir); a nil m removes the record.
func (s *Server) saveIdentity(key int64, m *identity) {
	if s.cfg.StateDir == "" {
		return
	}
	f := s.identityFile(key)
	if m == nil {
		_ = os.Remove(f)
		return
	}
	body := fmt.Sprintf("%016x %s %s %d\n", uint64(m.id), hex.EncodeToString(m.passwd), hex.EncodeToString(m.client), m.zoff)
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err == nil {
		tmp := f + ".tmp"
		if err = os.WriteFile(tmp, []byte(body), 0o600); err == nil {
			err = os.Rename(tmp, f)
		}
		if err == nil {
			return
		}
	}
	s.logs.warn(s.log, "state_dir", "cannot record a flipped session in --state-dir; after a restart its client would find its session expired",
		"dir", s.cfg.StateDir, "hint", "make --state-dir writable by the proxy")
}

// loadIdentity reads the record of client session key.
func (s *Server) loadIdentity(key int64) (identity, bool) {
	if s.cfg.StateDir == "" {
		return identity{}, false
	}
	b, err := os.ReadFile(s.identityFile(key))
	if err != nil {
		return identity{}, false
	}
	f := strings.Fields(string(b))
	if len(f) != 4 {
		return identity{}, false
	}
	id, err1 := strconv.ParseUint(f[0], 16, 64)
	pw, err2 := hex.DecodeString(f[1])
	cpw, err3 := hex.DecodeString(f[2])
	zoff, err4 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return identity{}, false
	}
	return identity{id: int64(id), passwd: pw, client: cpw, zoff: zoff}, true
}
