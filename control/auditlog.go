package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// AuditLog is an on-disk audit trail in the same hash-chained JSON-lines
// format as the control plane's export, for a process that has no Raft
// state of its own (zk-migrate sync --audit-log). It takes the JSON lines
// a writer such as the replicator produces (one object a line, with
// "time" and "kind"), wraps each in an AuditEntry (Action: kind, Detail:
// the line) chained to the one before, and rotates the file by size:
// FILE, FILE.1 (the newest rotated), ... FILE.Keep. A rotated file ends
// where the next begins, so each verifies on its own (zk-migrate audit
// verify --file) and so does their concatenation, oldest first. Reopened,
// it continues the chain of the file's last entry.
type AuditLog struct {
	path     string
	by       string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	size int64
	seq  uint64
	prev string
}

// OpenAuditLog opens (or creates) path for appending. maxBytes (default
// 100 MiB) triggers a rotation; keep (default 10) rotated files are kept,
// older ones deleted. by names the writer in every entry. A file whose
// last line is not a chained entry (written by an older version) is
// rotated away first, so the new file is one chain.
func OpenAuditLog(path, by string, maxBytes int64, keep int) (*AuditLog, error) {
	if maxBytes <= 0 {
		maxBytes = 100 << 20
	}
	if keep <= 0 {
		keep = 10
	}
	l := &AuditLog{path: path, by: by, maxBytes: maxBytes, keep: keep, prev: GenesisHash}
	last, err := lastEntry(path)
	switch {
	case err != nil && !os.IsNotExist(err):
		if err := l.shift(); err != nil {
			return nil, err
		}
	case err == nil:
		l.seq, l.prev = last.Seq, last.Hash
	default: // no file: continue the newest rotated one, if any
		if last, err := lastEntry(path + ".1"); err == nil {
			l.seq, l.prev = last.Seq, last.Hash
		}
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

// lastEntry reads the last chained entry of a file (an empty file is
// os.ErrNotExist: nothing to continue).
func lastEntry(path string) (AuditEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return AuditEntry{}, err
	}
	defer f.Close()
	var last []byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		if b := bytes.TrimSpace(sc.Bytes()); len(b) > 0 {
			last = append(last[:0], b...)
		}
	}
	if err := sc.Err(); err != nil {
		return AuditEntry{}, fmt.Errorf("control: read %s: %w", path, err)
	}
	if last == nil {
		return AuditEntry{}, os.ErrNotExist
	}
	var e AuditEntry
	if err := json.Unmarshal(last, &e); err != nil || e.Hash == "" || e.Seq == 0 {
		return AuditEntry{}, fmt.Errorf("control: %s does not end with a hash-chained entry", path)
	}
	return e, nil
}

func (l *AuditLog) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("control: audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("control: audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	return nil
}

// shift renames FILE to FILE.1, FILE.1 to FILE.2 ..., dropping FILE.keep.
func (l *AuditLog) shift() error {
	_ = os.Remove(fmt.Sprintf("%s.%d", l.path, l.keep))
	for i := l.keep - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", l.path, i), fmt.Sprintf("%s.%d", l.path, i+1)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("control: rotate audit log: %w", err)
		}
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("control: rotate audit log: %w", err)
	}
	return nil
}

// Write takes one or more JSON lines and appends one chained entry for
// each. It reports len(p) once every entry is written.
func (l *AuditLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, fmt.Errorf("control: audit log %s is closed", l.path)
	}
	for _, line := range bytes.Split(p, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var head struct {
			Time time.Time `json:"time"`
			Kind string    `json:"kind"`
		}
		_ = json.Unmarshal(line, &head)
		if head.Time.IsZero() {
			head.Time = time.Now()
		}
		if head.Kind == "" {
			head.Kind = "record"
		}
		e := AuditEntry{Seq: l.seq + 1, Time: head.Time.UTC(), By: l.by, Action: head.Kind, Detail: string(line), Result: "ok", PrevHash: l.prev}
		e.Hash = e.ComputeHash()
		b := append(e.ExportJSON(), '\n') // the form audit verify accepts
		if l.size > 0 && l.size+int64(len(b)) > l.maxBytes {
			if err := l.rotate(); err != nil {
				return 0, err
			}
		}
		if _, err := l.f.Write(b); err != nil {
			return 0, fmt.Errorf("control: audit log: %w", err)
		}
		l.size += int64(len(b))
		l.seq, l.prev = e.Seq, e.Hash
	}
	return len(p), nil
}

func (l *AuditLog) rotate() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("control: audit log: %w", err)
	}
	l.f = nil
	if err := l.shift(); err != nil {
		return err
	}
	return l.open()
}

// Close closes the file.
func (l *AuditLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

var _ io.WriteCloser = (*AuditLog)(nil)
