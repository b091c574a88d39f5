package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// trail applies a short migration and some records, one a day.
func trail(t *testing.T) *State {
	t.Helper()
	s := NewState()
	cmds := []Command{
		{Kind: CmdCreate, Migration: "m1", By: "alice", Config: &MigrationConfig{SourceZK: "a:1", TargetZK: "b:1"}},
		{Kind: CmdStart, Migration: "m1", By: "alice"},
		{Kind: CmdStart, Migration: "m1", By: "bob"}, // refused: still an entry
		{Kind: CmdRecord, Migration: "m1", By: "replicator:c1", Event: "conflict", Detail: `path=/a <b> & "c"`},
		{Kind: CmdStepRunning, Migration: "m1", By: "executor:c1", Step: StepDeployB},
		{Kind: CmdStepFailed, Migration: "m1", By: "executor:c1", Step: StepDeployB, Error: "digests differ"},
	}
	for i, c := range cmds {
		c.Time = t0.Add(time.Duration(i) * 24 * time.Hour)
		_ = s.Apply(c, uint64(10+i))
	}
	return s
}

func export(t *testing.T, entries []AuditEntry) []string {
	t.Helper()
	var lines []string
	for _, e := range entries {
		lines = append(lines, string(e.ExportJSON()))
	}
	return lines
}

func verifyLines(lines []string) (AuditSummary, error) {
	return VerifyAuditLines(strings.NewReader(strings.Join(lines, "\n") + "\n"))
}

func wantBreak(t *testing.T, err error, line int, reason string) {
	t.Helper()
	var b *AuditBreak
	if !errors.As(err, &b) || !errors.Is(err, ErrAuditTampered) {
		t.Fatalf("want a break at line %d (%q), got %v", line, reason, err)
	}
	if b.Line != line || !strings.Contains(b.Reason, reason) {
		t.Fatalf("want a break at line %d (%q), got %v", line, reason, err)
	}
}

// TestAuditChainDetectsTampering: an export verifies on its own; an edited,
// a removed and a reordered line are each detected at the first bad line,
// with the reason.
func TestAuditChainDetectsTampering(t *testing.T) {
	s := trail(t)
	lines := export(t, s.Audit)
	sum, err := verifyLines(lines)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 6 || sum.FirstSeq != 1 || sum.LastSeq != 6 || sum.Anchor != GenesisHash || sum.Head != s.Audit[5].Hash {
		t.Fatalf("summary: %+v", sum)
	}

	edited := append([]string(nil), lines...)
	edited[2] = strings.Replace(edited[2], `"by":"bob"`, `"by":"alice"`, 1)
	_, err = verifyLines(edited)
	wantBreak(t, err, 3, "edited")

	// Edited and re-hashed: the next line no longer chains to it.
	var e AuditEntry
	_ = json.Unmarshal([]byte(lines[3]), &e)
	e.Detail = "path=/elsewhere"
	e.Hash = e.ComputeHash()
	rehashed := append([]string(nil), lines...)
	rehashed[3] = export(t, []AuditEntry{e})[0]
	_, err = verifyLines(rehashed)
	wantBreak(t, err, 5, "is not the hash of line 4")

	removed := append(append([]string(nil), lines[:2]...), lines[3:]...)
	_, err = verifyLines(removed)
	wantBreak(t, err, 3, "1 entry was removed")

	reordered := append([]string(nil), lines...)
	reordered[3], reordered[4] = reordered[4], reordered[3]
	_, err = verifyLines(reordered)
	wantBreak(t, err, 4, "seq 4 is at line 5: lines were reordered")

	// The first line removed: the trail no longer starts at the genesis.
	_, err = verifyLines(lines[1:])
	if err != nil {
		t.Fatalf("a trail starting after an anchor verifies on its own: %v", err)
	}
	if sum, _ := verifyLines(lines[1:]); sum.Anchor != s.Audit[0].Hash {
		t.Fatalf("anchor of a trail starting at seq 2: %+v", sum)
	}
	first := append([]string(nil), lines...)
	var e0 AuditEntry
	_ = json.Unmarshal([]byte(lines[0]), &e0)
	e0.PrevHash = strings.Repeat("1", 64)
	e0.Hash = e0.ComputeHash()
	first[0] = export(t, []AuditEntry{e0})[0]
	_, err = verifyLines(first)
	wantBreak(t, err, 1, "genesis")

	_, err = verifyLines(append(append([]string(nil), lines[:2]...), "not json", lines[2]))
	wantBreak(t, err, 3, "not a JSON audit entry")
}

// TestAuditChainIsDeterministic: two replicas applying the same commands
// (times from the commands, never the clock) hold the same chain, and the
// hash covers HTML-significant characters without escaping ambiguity.
func TestAuditChainIsDeterministic(t *testing.T) {
	a, b := trail(t), trail(t)
	for i := range a.Audit {
		if a.Audit[i].Hash != b.Audit[i].Hash || a.Audit[i].Seq != uint64(i+1) {
			t.Fatalf("entry %d: %+v vs %+v", i, a.Audit[i], b.Audit[i])
		}
		if i > 0 && a.Audit[i].PrevHash != a.Audit[i-1].Hash {
			t.Fatalf("entry %d does not chain", i)
		}
	}
	if !bytes.Contains(a.Audit[3].CanonicalJSON(), []byte(`<b> & \"c\"`)) {
		t.Fatalf("canonical JSON: %s", a.Audit[3].CanonicalJSON())
	}
	// A time in another zone is the same instant: the same hash.
	e := a.Audit[1]
	e.Time = e.Time.In(time.FixedZone("X", 3600))
	if e.ComputeHash() != a.Audit[1].Hash {
		t.Fatal("the hash depends on the time zone of the entry's time")
	}
}

// TestAuditPruneKeepsTheChainVerifiable: pruning drops old entries of
// completed or deleted migrations only, records an anchor, and the
// retained trail plus every later entry still verifies from that anchor.
func TestAuditPruneKeepsTheChainVerifiable(t *testing.T) {
	s := NewState()
	apply := func(c Command, day int) {
		t.Helper()
		c.Time = t0.Add(time.Duration(day) * 24 * time.Hour)
		if err := s.Apply(c, uint64(len(s.Audit)+1)); err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
	}
	apply(Command{Kind: CmdRecord, By: "node:c1", Event: "leader-changed"}, 0)
	apply(Command{Kind: CmdCreate, Migration: "old", By: "a", Config: &MigrationConfig{}}, 1)
	apply(Command{Kind: CmdDelete, Migration: "old", By: "a"}, 2)
	apply(Command{Kind: CmdCreate, Migration: "live", By: "a", Config: &MigrationConfig{}}, 3)
	apply(Command{Kind: CmdStart, Migration: "live", By: "a"}, 400)
	before := append([]AuditEntry(nil), s.Audit...)

	// Retention 365 days at day 500: days 0-3 are older, but "live" (not
	// completed) keeps its entries from its create (day 3) on.
	apply(Command{Kind: CmdAuditPrune, By: "node:c1", Retention: 365 * 24 * time.Hour}, 500)
	if len(s.Audit) != 3 || s.Audit[0].Migration != "live" || s.AuditAnchor == nil || s.AuditAnchor.Seq != 3 || s.AuditAnchor.Hash != before[2].Hash {
		t.Fatalf("after prune: anchor %+v, audit %+v", s.AuditAnchor, s.Audit)
	}
	last := s.Audit[len(s.Audit)-1]
	if last.Action != string(CmdAuditPrune) || !strings.Contains(last.Detail, "pruned=3 anchor_seq=3") {
		t.Fatalf("prune entry: %+v", last)
	}
	sum, err := VerifyAudit(s.Audit)
	if err != nil || sum.Anchor != s.AuditAnchor.Hash || sum.FirstSeq != 4 {
		t.Fatalf("verify after prune: %+v %v", sum, err)
	}
	// The old export and the new one agree where they overlap.
	if s.Audit[0] != before[3] {
		t.Fatal("a retained entry changed")
	}
	// Nothing older: a prune that drops nothing changes nothing but its entry.
	if n := s.PrunableAudit(t0.Add(500 * 24 * time.Hour)); n != 0 {
		t.Fatalf("prunable: %d", n)
	}
	if err := s.Apply(Command{Kind: CmdAuditPrune, Time: t0}, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prune without retention: %v", err)
	}
}

// TestAuditLegacyEntriesAreSealed: a state written before the chain
// existed (entries without hashes) is chained at the next command, the
// same way on every replica.
func TestAuditLegacyEntriesAreSealed(t *testing.T) {
	legacy := func() *State {
		s := trail(t)
		for i := range s.Audit {
			s.Audit[i].Seq, s.Audit[i].PrevHash, s.Audit[i].Hash = 0, "", ""
		}
		_ = s.Apply(Command{Kind: CmdRecord, By: "x", Event: "upgraded", Time: t0}, 99)
		return s
	}
	a, b := legacy(), legacy()
	if _, err := VerifyAudit(a.Audit); err != nil {
		t.Fatal(err)
	}
	if a.Audit[6].Hash != b.Audit[6].Hash || a.Audit[6].Seq != 7 {
		t.Fatalf("sealed chains differ: %+v %+v", a.Audit[6], b.Audit[6])
	}
}

// TestAuditVerifyRefusesLinesNotInExportForm: the hash covers the decoded
// entry, so an export whose bytes were edited without changing what they
// decode to must still fail: duplicate keys (the last one wins in Go, the
// first in other readers), a differently cased extra key, the same
// instant in another time zone, \u escapes, extra fractional digits (the
// probe's t_*.jsonl). Each is refused at its line as "not in canonical
// form: edited"; the export itself and CRLF line ends verify.
func TestAuditVerifyRefusesLinesNotInExportForm(t *testing.T) {
	s := trail(t)
	lines := export(t, s.Audit)
	if _, err := verifyLines(lines); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyAuditLines(strings.NewReader(strings.Join(lines, "\r\n") + "\r\n")); err != nil {
		t.Fatalf("CRLF line ends: %v", err)
	}
	l := lines[2] // seq 3, by bob, refused
	ts := s.Audit[2].Time.UTC().Format(time.RFC3339Nano)
	for name, edited := range map[string]string{
		"duplicate key":      strings.Replace(l, `"by":"bob"`, `"by":"alice","by":"bob"`, 1),
		"cased extra key":    strings.Replace(l, `{"seq":3`, `{"Result":"ok","seq":3`, 1),
		"another time zone":  strings.Replace(l, `"time":"`+ts+`"`, `"time":"`+s.Audit[2].Time.In(time.FixedZone("", 10*3600+1800)).Format(time.RFC3339Nano)+`"`, 1),
		"unicode escape":     strings.Replace(l, `"by":"bob"`, `"by":"\u0062ob"`, 1),
		"fractional digits":  strings.Replace(l, `"time":"`+strings.TrimSuffix(ts, "Z"), `"time":"`+strings.TrimSuffix(ts, "Z")+".0000000001", 1),
		"space after colon":  strings.Replace(l, `"by":"bob"`, `"by": "bob"`, 1),
		"HTML-escaped chars": strings.Replace(lines[3], `<b>`, `\u003cb\u003e`, 1),
	} {
		if edited == l || edited == lines[3] {
			t.Fatalf("%s: the edit did not apply to %s", name, l)
		}
		tampered := append([]string(nil), lines...)
		if name == "HTML-escaped chars" {
			tampered[3] = edited
			_, err := verifyLines(tampered)
			wantBreak(t, err, 4, "not in canonical form: edited")
			continue
		}
		tampered[2] = edited
		var e AuditEntry
		if err := json.Unmarshal([]byte(edited), &e); err != nil || e.ComputeHash() != e.Hash {
			t.Fatalf("%s: the edited line should still decode to an entry matching its hash (%v): %s", name, err, edited)
		}
		_, err := verifyLines(tampered)
		wantBreak(t, err, 3, "not in canonical form: edited")
	}
}
