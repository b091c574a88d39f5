package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/control"
)

// TestAuditVerifyThroughTheCLI exports a real control node's audit trail
// as JSON lines and verifies it with `zk-migrate audit verify`: the export,
// the live trail and the export against the live trail verify (exit 0); an
// edited, a removed and a reordered line are each named (exit 3); a chain
// rewritten consistently from one line on passes alone but not against the
// control plane.
func TestAuditVerifyThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	api, _ := controlNode(t, dir, writeTokens(t, dir), "c1", "")
	waitFor(t, func() bool { // the node records its API address first
		out, code := run(t, "audit", "--api", api, "--token", opToken)
		return code == 0 && strings.Contains(out, "node-join")
	})
	for i := 0; i < 3; i++ { // refused attempts are audited too
		if out, code := run(t, "advance", "--phase", "2", "--confirm", "--migration", "m1", "--api", api, "--token", viewerToken); code != exitAuth {
			t.Fatalf("viewer advance: exit %d\n%s", code, out)
		}
	}
	out, code := run(t, "audit", "--output", "json", "--api", api, "--token", opToken)
	if code != 0 {
		t.Fatalf("audit export: exit %d\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 4 {
		t.Fatalf("want the node's join and 3 refusals:\n%s", out)
	}
	for i, l := range lines {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) != nil || e["hash"] == "" || e["prev_hash"] == "" || e["seq"] != float64(i+1) {
			t.Fatalf("line %d lacks seq/prev_hash/hash: %s", i+1, l)
		}
	}
	write := func(name string, ls []string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(ls, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	verify := func(file string, extra ...string) (string, int) {
		args := []string{"audit", "verify", "--api", api, "--token", viewerToken}
		if file != "" {
			args = append(args, "--file", file)
		}
		return run(t, append(args, extra...)...)
	}
	good := write("good.jsonl", lines)
	for _, c := range [][]string{{good}, {""}, {good, "--against-api"}} {
		if out, code := verify(c[0], c[1:]...); code != 0 || !strings.Contains(out, "verified") {
			t.Fatalf("verify %v: exit %d\n%s", c, code, out)
		}
	}

	edited := append([]string(nil), lines...)
	var e2 control.AuditEntry
	if err := json.Unmarshal([]byte(lines[1]), &e2); err != nil {
		t.Fatal(err)
	}
	e2.By = "alice" // hash and prev_hash left as they were
	edited[1] = string(e2.ExportJSON())
	reordered := append([]string(nil), lines...)
	reordered[1], reordered[2] = reordered[2], reordered[1]
	for _, c := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"edited", edited, "line 2 (seq 2): content does not match its hash (the entry was edited)"},
		{"removed", append(append([]string(nil), lines[:1]...), lines[2:]...), "line 2 (seq 3): expected seq 2, found 3: 1 entry was removed"},
		{"reordered", reordered, "line 2 (seq 3): expected seq 2 here, found 3; seq 2 is at line 3: lines were reordered"},
	} {
		out, code := verify(write(c.name+".jsonl", c.lines))
		if code != exitDifferent || !strings.Contains(out, "NOT VERIFIED") || !strings.Contains(out, c.want) {
			t.Errorf("%s line: exit %d, want %d and %q:\n%s", c.name, code, exitDifferent, c.want, out)
		}
	}

	// Rewrite the chain from line 2 on, consistently: alone it verifies,
	// against the control plane it does not.
	var entries []control.AuditEntry
	for _, l := range lines {
		var e control.AuditEntry
		_ = json.Unmarshal([]byte(l), &e)
		entries = append(entries, e)
	}
	entries[1].By = "alice"
	var rewritten []string
	for i := range entries {
		if i > 0 {
			entries[i].PrevHash = entries[i-1].Hash
			entries[i].Hash = entries[i].ComputeHash()
		}
		rewritten = append(rewritten, string(entries[i].ExportJSON()))
	}
	forged := write("rewritten.jsonl", rewritten)
	if out, code := verify(forged); code != 0 {
		t.Fatalf("a consistent rewrite alone: exit %d\n%s", code, out)
	}
	if out, code := verify(forged, "--against-api"); code != exitDifferent || !strings.Contains(out, "the export was rewritten") {
		t.Fatalf("a rewrite against the control plane: exit %d\n%s", code, out)
	}
	if out, code := verify(filepath.Join(dir, "missing.jsonl")); code != exitError {
		t.Fatalf("missing file: exit %d\n%s", code, out)
	}
}
