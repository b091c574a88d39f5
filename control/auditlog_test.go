package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditLogRotatesAndStaysVerifiable: the on-disk log chains every
// line, rotates by size keeping the newest files, each rotated file and
// the concatenation verify, a reopened log continues the chain, and a
// legacy file is rotated away rather than mixed in.
func TestAuditLogRotatesAndStaysVerifiable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(path, []byte(`{"kind":"conflict","path":"/old"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := OpenAuditLog(path, "sync", 1500, 2)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + ".1"); !strings.Contains(string(b), `"/old"`) {
		t.Fatalf("the legacy file was not rotated away: %q", b)
	}
	line := func(i int) []byte {
		return []byte(fmt.Sprintf(`{"time":"2026-11-25T10:00:%02dZ","kind":"conflict","path":"/mesos/n%d"}`+"\n", i%60, i))
	}
	for i := 0; i < 10; i++ {
		if _, err := l.Write(line(i)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	// Reopened: the chain goes on.
	if l, err = OpenAuditLog(path, "sync", 1500, 2); err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 14; i++ {
		if _, err := l.Write(line(i)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	var all []byte
	for _, p := range []string{path + ".2", path + ".1", path} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		sum, err := VerifyAuditLines(strings.NewReader(string(b)))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if sum.Entries == 0 || sum.LastSeq > 14 {
			t.Fatalf("%s: %+v", p, sum)
		}
		all = append(all, b...)
	}
	sum, err := VerifyAuditLines(strings.NewReader(string(all)))
	if err != nil || sum.LastSeq != 14 {
		t.Fatalf("the rotated files joined: %+v %v", sum, err)
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Fatalf("more than 2 rotated files kept: %v", err)
	}
	if sum.FirstSeq == 1 {
		t.Fatal("nothing was rotated out: the test wrote too little")
	}
}
