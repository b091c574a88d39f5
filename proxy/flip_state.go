package proxy

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The identity mapping of flipped sessions (4.6) in --state-dir, so a
// proxy restarted after a flip attaches a reconnecting client to the
// session that serves it (and translates its zxids as before) instead of
// presenting its original id to the new primary, which would answer
// "expired". One file per client session, sessions/<id>, removed with the
// session's shadow record: "serving-id serving-password client-password
// zxid-offset ensemble other-id other-password", the ensemble being the
// one the serving session lives on and other the client's session on the
// other ensemble (the shadow's at the time), so a proxy restarted on
// another primary than the record's finds the session that lives there
// (session_resume.go). A record of four fields (written before the last
// three were kept) is taken as the primary's.

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
	on := string(m.on)
	if on == "" {
		on = "-"
	}
	body := fmt.Sprintf("%016x %s %s %d %s %016x %s\n", uint64(m.id), hex.EncodeToString(m.passwd), hex.EncodeToString(m.client), m.zoff,
		on, uint64(m.other), hexOrDash(m.otherPw))
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
	if len(f) != 4 && len(f) != 7 {
		return identity{}, false
	}
	id, err1 := strconv.ParseUint(f[0], 16, 64)
	pw, err2 := hex.DecodeString(f[1])
	cpw, err3 := hex.DecodeString(f[2])
	zoff, err4 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return identity{}, false
	}
	m := identity{id: int64(id), passwd: pw, client: cpw, zoff: zoff}
	if len(f) == 7 {
		on := ensemble.Name(strings.TrimPrefix(f[4], "-"))
		other, err5 := strconv.ParseUint(f[5], 16, 64)
		opw, err6 := dashOrHex(f[6])
		if (on != "" && !on.Valid()) || err5 != nil || err6 != nil {
			return identity{}, false
		}
		m.on, m.other, m.otherPw = on, int64(other), opw
	}
	return m, true
}

func hexOrDash(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}

func dashOrHex(s string) ([]byte, error) {
	if s == "-" {
		return nil, nil
	}
	return hex.DecodeString(s)
}

// The version translation (view.go) in --state-dir: <state-dir>/versions
// holds, after every flip, each path the proxy translates or has shown to
// a client, with its offsets and the incarnation they hold for:
// "version cversion aversion czxid path" a line
// (ZooKeeper paths hold no newline). A proxy restarted after a flip loads
// it, so a version its clients read before the flip keeps its meaning
// after the restart. Written at every flip, at a clean stop and soon
// after a client is first shown a path (persistVersions). The first line, "# primary A epoch 3 agreed" (or B, the
// epoch, "own"), names the primary the offsets translate from, the epoch
// and whether they are the barrier's numbering (Offsets.Agreed); a proxy
// started on the other primary (a flip it missed while it was down)
// translates them at start (rebaseAtStart), and one whose offsets are not
// agreed for the epoch it starts at takes an agreed peer's once one
// answers (settleOffsets). Paths first shown are written within
// versionsSaveDelay, so a SIGKILL loses only the last moments' (their
// offset is 0 until the next flip): before, a proxy restarted inside a flip's barrier that had lost them
// translated nothing at its flip, its clients shown the new primary's own
// versions while its peers' were shown the old numbering (SPEC.md 5c).

func (s *Server) versionsFile() string { return filepath.Join(s.cfg.StateDir, "versions") }

// saveVersions writes the translation (nothing without --state-dir).
func (s *Server) saveVersions() {
	if s.cfg.StateDir == "" || !s.view.on {
		return
	}
	v := &s.view
	var b strings.Builder
	r := s.roles.Load()
	v.mu.RLock()
	agreed := "own"
	if v.agreed {
		agreed = "agreed"
	}
	fmt.Fprintf(&b, "# primary %s epoch %d %s\n", r.primary, r.epoch, agreed)
	for p := range v.seen {
		o := v.off[p]
		fmt.Fprintf(&b, "%d %d %d %d %s\n", o.v, o.c, o.a, o.czxid, p)
	}
	v.mu.RUnlock()
	f := s.versionsFile()
	tmp := f + ".tmp"
	err := os.MkdirAll(s.cfg.StateDir, 0o700)
	if err == nil {
		if err = os.WriteFile(tmp, []byte(b.String()), 0o600); err == nil {
			err = os.Rename(tmp, f)
		}
	}
	if err != nil {
		s.logs.warn(s.log, "state_dir", "cannot record the version translation in --state-dir; after a restart a version read before the flip may be refused (BADVERSION)",
			"dir", s.cfg.StateDir, "err", err, "hint", "make --state-dir writable by the proxy")
	}
}

// loadVersions reads the translation recorded before a restart.
func (s *Server) loadVersions() {
	if s.cfg.StateDir == "" || !s.view.on {
		return
	}
	b, err := os.ReadFile(s.versionsFile())
	if err != nil {
		return
	}
	v := &s.view
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil {
		v.seen = map[string]struct{}{}
	}
	off := map[string]verOff{}
	var from ensemble.Name
	fromEpoch, agreed := int64(-1), false
	for _, line := range strings.Split(string(b), "\n") {
		if h, ok := strings.CutPrefix(line, "# primary "); ok {
			// "A", or "A epoch 3 agreed" (a file written before the epoch
			// was kept: not agreed, settleOffsets asks the peers).
			f := strings.Fields(h)
			if len(f) > 0 {
				from = ensemble.Name(f[0])
			}
			if len(f) == 4 && f[1] == "epoch" {
				if e, err := strconv.ParseInt(f[2], 10, 64); err == nil {
					fromEpoch, agreed = e, f[3] == "agreed"
				}
			}
			continue
		}
		f := strings.SplitN(line, " ", 5)
		if len(f) != 5 || len(v.seen) >= maxStatPaths {
			continue
		}
		ov, e1 := strconv.ParseInt(f[0], 10, 32)
		oc, e2 := strconv.ParseInt(f[1], 10, 32)
		oa, e3 := strconv.ParseInt(f[2], 10, 32)
		cz, e4 := strconv.ParseInt(f[3], 10, 64)
		if e1 != nil || e2 != nil || e3 != nil || e4 != nil {
			continue
		}
		v.seen[f[4]] = struct{}{}
		if o := (verOff{v: int32(ov), c: int32(oc), a: int32(oa), czxid: cz}); o.v != 0 || o.c != 0 || o.a != 0 {
			off[f[4]] = o
		}
	}
	v.off = off
	r := s.roles.Load()
	// Agreed only for the epoch it was agreed at: a file from an older
	// epoch on the same primary (flips there and back while the proxy was
	// down) holds offsets of another flip.
	v.agreed = agreed && from == r.primary && fromEpoch == r.epoch
	if from.Valid() && from != r.primary && len(v.seen) > 0 {
		s.rebaseAtStart(from)
		return
	}
	if !v.agreed && r.epoch > 0 {
		s.settleOffsets()
	}
}

// rebaseAtStart translates the recorded offsets, which are from's, to the
// primary the proxy starts on: the flip it missed while it was down,
// done for its versions as a flip does them (rebase: for each path, the
// difference between the two ensembles' stats plus the recorded offset,
// or a peer's offset for this epoch where a peer has one: the numbering
// the other proxies' clients already see).
// Client requests and flips wait meanwhile (the hold and flipMu, taken
// here before the server serves). If the ensembles cannot be read within
// the start budget, the offsets are dropped, with a WARN: versions are
// then the serving ensemble's own (a version read before the flip may be
// refused with BADVERSION, never accepted wrongly by a stale offset).
func (s *Server) rebaseAtStart(from ensemble.Name) {
	s.flipMu.Lock()
	s.hold.Lock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.flipMu.Unlock()
		defer s.hold.Unlock()
		r := s.roles.Load()
		ctx, cancel := context.WithTimeout(s.ctx, rebaseAtStartBudget)
		defer cancel()
		agreed := false
		err := func() error {
			opts := zkclient.Options{DialTimeout: s.cfg.DialTimeout, Dial: s.cfg.Dial}
			oc, err := zkclient.Dial(ctx, r.secondary, opts)
			if err != nil {
				return fmt.Errorf("reach %s: %w", from.Flag(), err)
			}
			defer oc.Close()
			nc, err := zkclient.Dial(ctx, r.upstream, opts)
			if err != nil {
				return fmt.Errorf("reach %s: %w", r.primary.Flag(), err)
			}
			defer nc.Close()
			// The peers that took the flip read the versions while every
			// proxy held: their numbering wins (view_peers.go), as for a
			// flip caught up late.
			peer := s.peerOffsets(ctx, r.epoch, r.primary)
			agreed = peer != nil
			return s.rebase(ctx, oc, nc, peer)
		}()
		if err != nil {
			s.view.mu.Lock()
			s.view.off = map[string]verOff{}
			s.view.agreed = false
			s.view.mu.Unlock()
			s.settleOffsets()
			s.logs.warn(s.log, "state_dir", "the version translation in --state-dir is for the other primary and could not be carried over; versions are the serving ensemble's own",
				"recorded_for", from.Flag(), "primary", r.primary.Flag(), "err", err,
				"hint", "a conditional write with a version read before the flip may get BADVERSION; the client reads again")
			return
		}
		s.view.setAgreed(agreed)
		s.saveVersions()
		if !agreed {
			s.settleOffsets()
		}
		s.log.Info("carried the version translation over to the primary this proxy starts on (it missed a flip while down)",
			"from", from.Flag(), "primary", r.primary.Flag())
	}()
}

// rebaseAtStartBudget bounds the version reads of rebaseAtStart; client
// requests wait meanwhile.
const rebaseAtStartBudget = 10 * time.Second

// versionsSaveDelay is how long after a path is first shown the version
// file records it (paths shown meanwhile are written together), plus as
// much again per versionsSavePaths recorded paths: the whole file is
// written each time (2.75 s at the 100,000 paths maxStatPaths allows).
const (
	versionsSaveDelay = 250 * time.Millisecond
	versionsSavePaths = 10000
)

// persistVersions writes the version file soon after a client is first
// shown a path (view.dirty), until the server stops. It writes under
// flipMu, so the file's primary and epoch are those of its offsets (a
// flip puts its offsets in force before its roles).
func (s *Server) persistVersions() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.view.dirty:
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(s.versionsSaveWait()):
		}
		if !s.lockFlipMu() {
			return
		}
		s.saveVersions()
		s.flipMu.Unlock()
	}
}

// versionsSaveWait is versionsSaveDelay scaled by the paths recorded.
func (s *Server) versionsSaveWait() time.Duration {
	s.view.mu.RLock()
	n := len(s.view.seen)
	s.view.mu.RUnlock()
	return versionsSaveDelay * time.Duration(1+n/versionsSavePaths)
}

// lockFlipMu takes flipMu, polling so that it gives up (false) when the
// server stops.
func (s *Server) lockFlipMu() bool {
	for !s.flipMu.TryLock() {
		select {
		case <-s.ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}
