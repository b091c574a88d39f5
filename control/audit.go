package control

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The audit trail is a hash chain (SPEC.md, "Audit trail integrity"):
// every entry carries its position in the whole trail (Seq, 1, 2, ... and
// never reused, also after pruning), the hash of the entry before it
// (PrevHash) and its own hash:
//
//	Hash = hex(SHA-256(PrevHash + CanonicalJSON(entry)))
//
// The first entry ever written has PrevHash GenesisHash. State.Apply
// computes the hash from the command alone (its time, author, the Raft
// index), so every replica computes the same chain. An exported trail
// (zk-migrate audit --output json, one entry a line) carries Seq, PrevHash
// and Hash on every line and can be verified on its own (VerifyAudit).

// GenesisHash is the PrevHash of the first entry of a trail.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// AuditAnchor is where the retained trail starts after pruning: the Seq
// and Hash of the last pruned entry (the first retained entry's PrevHash).
type AuditAnchor struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"` // the last pruned entry's time
}

// canonicalEntry is the hashed form of an entry: every field but the
// hashes, in this order, always present, time in UTC RFC 3339 with
// nanoseconds, no HTML escaping, no spaces.
type canonicalEntry struct {
	Seq       uint64 `json:"seq"`
	Index     uint64 `json:"index"`
	Time      string `json:"time"`
	Migration string `json:"migration"`
	By        string `json:"by"`
	Action    string `json:"action"`
	Detail    string `json:"detail"`
	Result    string `json:"result"`
}

// CanonicalJSON is the byte string an entry's hash covers.
func (e AuditEntry) CanonicalJSON() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(canonicalEntry{Seq: e.Seq, Index: e.Index, Time: e.Time.UTC().Format(time.RFC3339Nano),
		Migration: e.Migration, By: e.By, Action: e.Action, Detail: e.Detail, Result: e.Result})
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// ExportJSON is the entry's line in an export (zk-migrate audit --output
// json), without the newline: encoding/json's encoding of the entry, with
// its time in UTC and no HTML escaping (like CanonicalJSON: "->" stays
// "->"). It is the only form VerifyAuditLines accepts: a line
// that decodes to an entry but is not byte for byte its ExportJSON
// (duplicate or differently cased keys, another time zone, \u escapes,
// extra fractional digits, spaces) was edited.
func (e AuditEntry) ExportJSON() []byte {
	e.Time = e.Time.UTC()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil { // strings, numbers and a UTC time always encode
		panic(fmt.Sprintf("control: encode audit entry %d: %v", e.Seq, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// ComputeHash is the hash the entry must carry given its PrevHash.
func (e AuditEntry) ComputeHash() string {
	h := sha256.New()
	h.Write([]byte(e.PrevHash))
	h.Write(e.CanonicalJSON())
	return hex.EncodeToString(h.Sum(nil))
}

// headHash is the hash the next entry chains to, and its Seq.
func (s *State) headHash() (string, uint64) {
	if n := len(s.Audit); n > 0 {
		return s.Audit[n-1].Hash, s.Audit[n-1].Seq
	}
	if s.AuditAnchor != nil {
		return s.AuditAnchor.Hash, s.AuditAnchor.Seq
	}
	return GenesisHash, 0
}

// appendAudit chains e to the trail and appends it.
func (s *State) appendAudit(e AuditEntry) {
	s.sealLegacy()
	prev, seq := s.headHash()
	e.Seq, e.PrevHash = seq+1, prev
	e.Hash = e.ComputeHash()
	s.Audit = append(s.Audit, e)
}

// sealLegacy chains entries written before the trail was hash-chained (a
// state restored from an older snapshot or log): every replica does it at
// the same log position, so they agree.
func (s *State) sealLegacy() {
	if n := len(s.Audit); n == 0 || s.Audit[n-1].Hash != "" {
		return
	}
	prev, seq := GenesisHash, uint64(0)
	if s.AuditAnchor != nil {
		prev, seq = s.AuditAnchor.Hash, s.AuditAnchor.Seq
	}
	for i := range s.Audit {
		e := &s.Audit[i]
		if e.Hash == "" {
			e.Seq, e.PrevHash = seq+1, prev
			e.Hash = e.ComputeHash()
		}
		prev, seq = e.Hash, e.Seq
	}
}

// pruneAudit drops the oldest entries written before cutoff, but never an
// entry of a migration that has not completed (from its last create on: its
// report replays them), and keeps the chain verifiable: the last pruned
// entry becomes the anchor. It returns how many entries it dropped.
func (s *State) pruneAudit(cutoff time.Time) int {
	s.sealLegacy()
	n := s.PrunableAudit(cutoff)
	if n == 0 {
		return 0
	}
	last := s.Audit[n-1]
	s.AuditAnchor = &AuditAnchor{Seq: last.Seq, Hash: last.Hash, Time: last.Time}
	s.Audit = append([]AuditEntry(nil), s.Audit[n:]...)
	return n
}

// PrunableAudit counts the entries an audit-prune with this cutoff would
// drop (the leader proposes one only when there are some).
func (s *State) PrunableAudit(cutoff time.Time) int {
	limit := len(s.Audit)
	for id, m := range s.Migrations {
		if m.Status == StatusCompleted {
			continue
		}
		for i := len(s.Audit) - 1; i >= 0; i-- {
			if e := s.Audit[i]; e.Migration == id && e.Action == string(CmdCreate) && e.Result == "ok" {
				limit = min(limit, i)
				break
			}
		}
	}
	n := 0
	for n < limit && s.Audit[n].Time.Before(cutoff) {
		n++
	}
	return n
}

// applyPrune handles CmdAuditPrune: the cutoff is the command's Time minus
// its Retention, so every replica prunes the same entries.
func (s *State) applyPrune(c Command) (string, error) {
	if c.Retention <= 0 {
		return "", fmt.Errorf("%w: audit-prune needs a positive retention", ErrInvalid)
	}
	cutoff := c.Time.Add(-c.Retention)
	n := s.pruneAudit(cutoff)
	detail := fmt.Sprintf("retention=%s cutoff=%s pruned=%d", c.Retention, cutoff.UTC().Format(time.RFC3339), n)
	if a := s.AuditAnchor; a != nil && n > 0 {
		detail += fmt.Sprintf(" anchor_seq=%d anchor_hash=%s", a.Seq, a.Hash)
	}
	return strings.TrimSpace(detail), nil
}
