package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ErrAuditTampered means an exported audit trail is not an unbroken hash
// chain: a line was edited, removed or reordered (AuditBreak says which).
var ErrAuditTampered = errors.New("control: audit trail does not verify")

// AuditBreak is the first place an audit trail fails to verify.
type AuditBreak struct {
	Line   int    // 1-based line of the export (or position in the list)
	Seq    uint64 // the Seq that line claims
	Reason string
}

func (b *AuditBreak) Error() string {
	return fmt.Sprintf("line %d (seq %d): %s", b.Line, b.Seq, b.Reason)
}

func (b *AuditBreak) Unwrap() error { return ErrAuditTampered }

// AuditSummary describes a trail that verified.
type AuditSummary struct {
	Entries  int    `json:"entries"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Anchor is the first entry's PrevHash: GenesisHash for a trail that
	// starts at its beginning, else the hash of the last pruned entry.
	Anchor string `json:"anchor"`
	// Head is the last entry's hash: compare it with the live control
	// plane's to detect a trail rewritten from some line to its end.
	Head string `json:"head"`
}

// VerifyAuditLines reads an exported trail, one JSON entry a line (blank
// lines ignored, a CRLF line end allowed), and verifies it as VerifyAudit
// does. A line that is not a JSON entry is a break, and so is a line that
// is not byte for byte the export form of the entry it decodes to
// (AuditEntry.ExportJSON): the hash covers the decoded entry, so without
// this check duplicate keys, differently cased keys, another time zone for
// the same instant, \u escapes or extra fractional digits would change
// the line's bytes and still verify.
func VerifyAuditLines(r io.Reader) (AuditSummary, error) {
	var entries []AuditEntry
	var lines []int
	sc := bufio.NewScanner(r) // ScanLines drops a trailing \r
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for n := 1; sc.Scan(); n++ {
		b := sc.Bytes()
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		var e AuditEntry
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return AuditSummary{}, &AuditBreak{Line: n, Reason: "not a JSON audit entry: " + err.Error()}
		}
		if canon := e.ExportJSON(); !bytes.Equal(b, canon) {
			return AuditSummary{}, &AuditBreak{Line: n, Seq: e.Seq, Reason: "not in canonical form: edited (" + firstDiff(b, canon) +
				"; zk-migrate audit --output json writes each entry in exactly one form, so any other bytes were changed after the export)"}
		}
		entries, lines = append(entries, e), append(lines, n)
	}
	if err := sc.Err(); err != nil {
		return AuditSummary{}, fmt.Errorf("control: read audit: %w", err)
	}
	return verifyAudit(entries, lines)
}

// VerifyAudit checks that entries form an unbroken chain: each entry's
// hash matches its content (else it was edited), each Seq follows the one
// before (else an entry was removed, or lines were reordered, or the
// export was filtered by migration), and each PrevHash is the hash of the
// entry before it. The first entry's PrevHash is taken as the anchor.
func VerifyAudit(entries []AuditEntry) (AuditSummary, error) {
	lines := make([]int, len(entries))
	for i := range lines {
		lines[i] = i + 1
	}
	return verifyAudit(entries, lines)
}

func verifyAudit(entries []AuditEntry, lines []int) (AuditSummary, error) {
	if len(entries) == 0 {
		return AuditSummary{}, nil
	}
	lineOfSeq := make(map[uint64]int, len(entries))
	for i, e := range entries {
		if _, dup := lineOfSeq[e.Seq]; !dup {
			lineOfSeq[e.Seq] = lines[i]
		}
	}
	for i, e := range entries {
		brk := func(format string, args ...any) error {
			return &AuditBreak{Line: lines[i], Seq: e.Seq, Reason: fmt.Sprintf(format, args...)}
		}
		if e.Hash == "" || e.Seq == 0 {
			return AuditSummary{}, brk("no seq or hash: not a hash-chained entry (export it with zk-migrate audit --output json)")
		}
		if got := e.ComputeHash(); got != e.Hash {
			return AuditSummary{}, brk("content does not match its hash (the entry was edited): hash says %s, content hashes to %s", short(e.Hash), short(got))
		}
		if i == 0 {
			if e.Seq == 1 && e.PrevHash != GenesisHash {
				return AuditSummary{}, brk("the first entry of the trail must chain to the genesis hash, not %s", short(e.PrevHash))
			}
			continue
		}
		prev := entries[i-1]
		want := prev.Seq + 1
		switch {
		case e.Seq == want:
		case e.Seq <= prev.Seq:
			return AuditSummary{}, brk("seq %d comes after seq %d: lines were reordered or duplicated", e.Seq, prev.Seq)
		default:
			if l, ok := lineOfSeq[want]; ok {
				return AuditSummary{}, brk("expected seq %d here, found %d; seq %d is at line %d: lines were reordered", want, e.Seq, want, l)
			}
			return AuditSummary{}, brk("expected seq %d, found %d: %d entr%s removed before this line (or the export was filtered with --migration: verify an unfiltered export)",
				want, e.Seq, e.Seq-want, plural(e.Seq-want, "y was", "ies were"))
		}
		if e.PrevHash != prev.Hash {
			return AuditSummary{}, brk("prev_hash %s is not the hash of line %d (%s): the entry before it was edited and re-hashed, or replaced",
				short(e.PrevHash), lines[i-1], short(prev.Hash))
		}
	}
	last := entries[len(entries)-1]
	return AuditSummary{Entries: len(entries), FirstSeq: entries[0].Seq, LastSeq: last.Seq, Anchor: entries[0].PrevHash, Head: last.Hash}, nil
}

// firstDiff says where a line first differs from its canonical form.
func firstDiff(line, canon []byte) string {
	i := 0
	for i < len(line) && i < len(canon) && line[i] == canon[i] {
		i++
	}
	snip := func(b []byte) string {
		end := min(i+24, len(b))
		return fmt.Sprintf("%q", b[i:end])
	}
	return fmt.Sprintf("byte %d of the line is %s, the export form has %s", i+1, snip(line), snip(canon))
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "..."
	}
	return h
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
