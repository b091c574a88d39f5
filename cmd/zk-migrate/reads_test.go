package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadsThroughAFollowerSeeTheirOwnWrites: `pause` then `status` (and
// `audit`) through the same follower show the pause at once, and `resume`
// then `status` the resume, 10 times in a row: a follower forwards reads
// of migrations and audit to the leader, which applied the write before
// acknowledging it. With the quorum lost, the survivor still answers
// `status`, warning that its state may lag, and says the sync is not
// running (no leader can run it).
func TestReadsThroughAFollowerSeeTheirOwnWrites(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	apis, cmds := startControlPlane(t, dir, tokens)
	cfg := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(cfg, []byte("migration: {id: m1, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:2\", require_manual_approval: true}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cli := func(i int, args ...string) string {
		t.Helper()
		out, code := run(t, append(args, "--api", "http://"+apis[i], "--token", opToken)...)
		if code != 0 {
			t.Fatalf("%v on c%d: exit %d\n%s", args, i+1, code, out)
		}
		return out
	}
	cli(0, "start", "--config", cfg) // waits for approval: nothing runs
	leader := -1
	for i, api := range apis {
		var h struct {
			IsLeader bool `json:"is_leader"`
		}
		if resp, err := http.Get("http://" + api + "/healthz"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
		}
		if h.IsLeader {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no leader")
	}
	paused := func(i int) bool {
		t.Helper()
		var rows []struct {
			Paused bool `json:"paused"`
		}
		out := cli(i, "status", "--migration", "m1", "--output", "json")
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
			t.Fatalf("status: %v\n%s", err, out)
		}
		return rows[0].Paused
	}
	for n := 1; n <= 10; n++ {
		f := (leader + 1 + n%2) % 3 // a follower, alternating
		cli(f, "pause")
		if !paused(f) {
			t.Fatalf("round %d: status through c%d right after its pause shows paused=false", n, f+1)
		}
		if got := strings.Count(cli(f, "audit", "--migration", "m1"), " pause "); got != n {
			t.Fatalf("round %d: audit through c%d right after its pause lists %d pauses", n, f+1, got)
		}
		cli(f, "resume")
		if paused(f) {
			t.Fatalf("round %d: status through c%d right after its resume shows paused=true", n, f+1)
		}
	}

	survivor := (leader + 1) % 3
	for i := range cmds {
		if i != survivor {
			_ = cmds[i].Process.Kill()
			_ = cmds[i].Wait()
		}
	}
	out := cli(survivor, "status")
	if !strings.Contains(out, "warning: answered by c") || !strings.Contains(out, "may lag") {
		t.Fatalf("status on a survivor without a quorum does not say it may lag:\n%s", out)
	}
}
