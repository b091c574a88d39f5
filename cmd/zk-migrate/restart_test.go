package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfStats reads a control node's own Raft progress.
func selfStats(t *testing.T, api string) (st struct {
	State        string `json:"state"`
	AppliedIndex uint64 `json:"applied_index"`
}, err error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/api/v1/cluster/self", nil)
	req.Header.Set("Authorization", "Bearer "+opToken)
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// TestCrashedNodeRestartsFromItsDataDir: a follower SIGKILLed and started
// again with only its --id, addresses and --data-dir (neither --bootstrap
// nor --join) starts from its Raft state, catches up with what was
// written while it was down, and is a voter again. A node with an empty
// --data-dir and neither flag is a usage error that says what to give.
func TestCrashedNodeRestartsFromItsDataDir(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	apis, cmds := startControlPlane(t, dir, tokens)
	cfg := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(cfg, []byte("migration: {id: m1, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:2\", require_manual_approval: true}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	leader := -1
	for i, api := range apis {
		if st, err := selfStats(t, api); err == nil && st.State == "Leader" {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no leader")
	}
	f := (leader + 1) % 3
	_ = cmds[f].Process.Kill()
	_ = cmds[f].Wait()
	if out, code := run(t, "start", "--config", cfg, "--api", "http://"+apis[leader], "--token", opToken); code != 0 {
		t.Fatalf("start while c%d is down: exit %d\n%s", f+1, code, out)
	}
	want, err := selfStats(t, apis[leader])
	if err != nil {
		t.Fatal(err)
	}

	var args []string // the same node, without --join URL
	for i := 1; i < len(cmds[f].Args); i++ {
		if cmds[f].Args[i] == "--join" {
			i++
			continue
		}
		args = append(args, cmds[f].Args[i])
	}
	cmd := exec.Command(bin, args...)
	logf, _ := os.OpenFile(filepath.Join(dir, "restart.log"), os.O_CREATE|os.O_WRONLY, 0o644)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			l, _ := os.ReadFile(filepath.Join(dir, "restart.log"))
			t.Fatalf("restarted c%d exited: %v\n%s", f+1, err, l)
		default:
		}
		st, err := selfStats(t, apis[f])
		if err == nil && st.State == "Follower" && st.AppliedIndex >= want.AppliedIndex {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted c%d never caught up to index %d: %+v %v", f+1, want.AppliedIndex, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rows := nodeList(t, "http://"+apis[f])
	voters := 0
	for _, r := range rows {
		if r.Voter {
			voters++
		}
	}
	if len(rows) != 3 || voters != 3 {
		t.Fatalf("after the restart: %+v", rows)
	}
	if out, code := run(t, "pause", "--api", "http://"+apis[f], "--token", opToken); code != 0 {
		t.Fatalf("write through the restarted node: exit %d\n%s", code, out)
	}

	out, code := run(t, "control", "--id", "c9", "--raft-addr", freeAddr(t), "--api-addr", freeAddr(t),
		"--data-dir", filepath.Join(dir, "fresh"), "--tokens", tokens)
	if code != exitUsage || !strings.Contains(out, "holds no Raft state") || !strings.Contains(out, "--bootstrap") {
		t.Fatalf("a fresh node with neither flag: exit %d\n%s", code, out)
	}
}
