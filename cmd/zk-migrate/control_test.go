package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
)

const (
	opToken     = "operator-token-0123456789"
	viewerToken = "viewer-token-0123456789ab"
)

// TestMigrationThroughTheCLI runs three control-plane processes and drives
// a whole migration with the CLI against two real ensembles: phase 1 really
// syncs B from A and waits for equal digests, phases 2-6 run the shell
// actions of migration.yaml, a viewer cannot change anything, and the audit
// names who did what.
func TestMigrationThroughTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and three control nodes")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "cp")
	ca, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	for _, p := range []string{"/mesos", "/mesos/log_replicas", "/mesos/json.info_0000000003"} {
		if _, err := ca.Create(p, []byte("v"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("%s operator alice\n%s viewer victor\n", opToken, viewerToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	marks := filepath.Join(dir, "marks")
	flag := filepath.Join(dir, "failed-once")
	// A real webhook receiver on loopback for the alerts.
	var hookMu sync.Mutex
	var hooks []string
	hookLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hookSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hookMu.Lock()
		hooks = append(hooks, string(b))
		hookMu.Unlock()
	})}
	go func() { _ = hookSrv.Serve(hookLn) }()
	defer hookSrv.Close()
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
migration:
  id: prod
  source_zk: %s
  target_zk: %s
  paths: [/mesos]
actions:
  masters_on_b: {run: "sleep 1; grep -qx masters_on_b %[3]s || echo masters_on_b >> %[3]s", verify: "grep -q masters_on_b %[3]s"}
  masters_off_a: {run: "test -f %[4]s || { touch %[4]s; echo 'masters did not stop' >&2; exit 1; }; echo masters_off_a >> %[3]s"}
  agents_on_b: {run: "echo agents_on_b >> %[3]s"}
  drain_agents_a: {run: "echo drain_agents_a >> %[3]s"}
  remove_a: {run: "echo remove_a >> %[3]s"}
alerts:
  slack_webhook: http://%[5]s/hook
`, a.ConnectString(), b.ConnectString(), marks, flag, hookLn.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}

	apis, cmds := startControlPlane(t, dir, tokens)
	// Talk to a follower (the third node): writes are forwarded to the leader.
	api := "http://" + apis[2]
	cli := func(args ...string) (string, int) {
		return run(t, append(args, "--api", api, "--token", opToken)...)
	}
	mustCLI := func(args ...string) string {
		t.Helper()
		out, code := cli(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	// waitStatus waits until status shows the migration at step with
	// status (and primary, when given).
	waitStatus := func(step, status, primary string) string {
		t.Helper()
		var out string
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			out = mustCLI("status")
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) >= 6 && f[0] == "prod" && f[2] == step && f[3] == status && (primary == "" || f[4] == primary) {
					return out
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("status never showed %s %s %s:\n%s", step, status, primary, out)
		return ""
	}

	mustCLI("start", "--config", cfg)
	waitStatus("1-deploy-b-and-sync", "succeeded", "A")
	if out := mustCLI("validate", "--phase", "current"); !strings.Contains(out, "healthy") || strings.Contains(out, "NOT") {
		t.Fatalf("validate after phase 1:\n%s", out)
	}
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if ok, _, _ := cb.Exists("/mesos/json.info_0000000003"); !ok {
		t.Fatal("phase 1 succeeded but B lacks A's nodes")
	}
	if out, code := run(t, "advance", "--phase", "flip", "--confirm", "--api", api, "--token", viewerToken); code != exitAuth {
		t.Fatalf("viewer advanced: exit %d\n%s", code, out)
	}
	if out, code := cli("advance", "--phase", "3", "--confirm"); code != exitRefused || !strings.Contains(out, "the next step is flip") {
		t.Fatalf("skipping a phase: exit %d\n%s", code, out)
	}
	if _, code := cli("advance", "--phase", "flip"); code != exitUsage {
		t.Fatalf("advance without --confirm: exit %d", code)
	}
	mustCLI("advance", "--phase", "flip", "--confirm")
	waitStatus("flip", "succeeded", "B")
	steps := map[int]string{2: "2-masters-on-b", 3: "3-masters-off-a", 4: "4-agents-on-b", 5: "5-drain-agents-a"}
	for phase := 2; phase <= 5; phase++ {
		mustCLI("advance", "--phase", fmt.Sprint(phase), "--confirm")
		if phase == 2 {
			// Kill the leader while phase 2's action runs: the new leader
			// runs it again (actions are idempotent) and finishes.
			time.Sleep(300 * time.Millisecond)
			api = killLeader(t, apis, cmds)
		}
		if phase == 3 {
			// The action fails once: the phase fails, an alert goes out,
			// and an operator retries it.
			out := waitStatus(steps[phase], "failed", "B")
			if !strings.Contains(out, "masters did not stop") {
				t.Fatalf("failure reason not shown:\n%s", out)
			}
			waitFor(t, func() bool {
				hookMu.Lock()
				defer hookMu.Unlock()
				for _, h := range hooks { // the leader killed in phase 2 also sent sync_stopped
					if strings.Contains(h, "phase_failed") && strings.Contains(h, "3-masters-off-a failed") {
						return true
					}
				}
				return false
			})
			if out, code := cli("validate", "--phase", "current"); code != exitDifferent || !strings.Contains(out, "NOT healthy") {
				t.Fatalf("validate on a failed phase: exit %d\n%s", code, out)
			}
			mustCLI("retry")
		}
		waitStatus(steps[phase], "succeeded", "B")
	}
	mustCLI("advance", "--phase", "6", "--confirm")
	out := waitStatus("done", "completed", "B")
	t.Log(out)
	got, _ := os.ReadFile(marks)
	if string(got) != "masters_on_b\nmasters_off_a\nagents_on_b\ndrain_agents_a\nremove_a\n" {
		t.Fatalf("phase actions ran as:\n%s", got)
	}
	report := mustCLI("report")
	t.Log(report)
	for _, want := range []string{"migration prod: completed, primary ensemble B", "3-masters-off-a", "1 failure(s)", "flip: epoch 1"} {
		if !strings.Contains(report, want) {
			t.Fatalf("report lacks %q:\n%s", want, report)
		}
	}
	for i, line := range strings.Split(strings.TrimSpace(mustCLI("audit", "--output", "json")), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil || e["action"] == nil {
			t.Fatalf("audit JSON line %d: %q (%v)", i, line, err)
		}
	}
	audit := mustCLI("audit")
	for _, want := range []string{"alice      create", "alice      advance", "executor:c", "step-succeeded"} {
		if !strings.Contains(audit, want) {
			t.Fatalf("audit lacks %q:\n%s", want, audit)
		}
	}
}

// startControlPlane starts three `zk-migrate control` processes (c1
// bootstraps, c2 and c3 join) and returns their API addresses.
func startControlPlane(t *testing.T, dir, tokens string) ([]string, []*exec.Cmd) {
	t.Helper()
	var cmds []*exec.Cmd
	var apis []string
	for i := 1; i <= 3; i++ {
		api := freeAddr(t)
		args := []string{"control", "--id", fmt.Sprintf("c%d", i), "--raft-addr", freeAddr(t), "--api-addr", api,
			"--data-dir", filepath.Join(dir, fmt.Sprintf("c%d", i)), "--tokens", tokens, "--raft-stabilization", "500ms"}
		if i == 1 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", "http://"+apis[0])
		}
		cmd := exec.Command(bin, args...)
		logf, _ := os.Create(filepath.Join(dir, fmt.Sprintf("c%d.log", i)))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
		apis = append(apis, api)
		cmds = append(cmds, cmd)
		waitFor(t, func() bool {
			out, code := run(t, "status", "--api", "http://"+api, "--token", opToken)
			return code == 0 && strings.Contains(out, "MIGRATION")
		})
	}
	waitVoters(t, "http://"+apis[0], 3) // joined nodes vote once caught up
	return apis, cmds
}

// killLeader SIGKILLs the control process that leads and returns the API
// of a survivor.
func killLeader(t *testing.T, apis []string, cmds []*exec.Cmd) string {
	t.Helper()
	for i, api := range apis {
		resp, err := http.Get("http://" + api + "/healthz")
		if err != nil {
			continue
		}
		var h struct {
			IsLeader bool `json:"is_leader"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if h.IsLeader {
			_ = cmds[i].Process.Kill()
			return "http://" + apis[(i+1)%len(apis)]
		}
	}
	t.Fatal("no leader to kill")
	return ""
}

// TestApprovalPauseRollbackThroughTheCLI: with require_manual_approval
// every phase waits for `approve`; `pause` stops the executor; `rollback`
// below the flip brings the primary back to A under a new epoch; the
// migration can go forward again.
func TestApprovalPauseRollbackThroughTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and three control nodes")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "cp2")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(opToken+" operator bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	undo := filepath.Join(dir, "undone")
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
migration:
  id: gated
  source_zk: %s
  target_zk: %s
  require_manual_approval: true
actions:
  masters_on_b: {run: "true", undo: "echo masters_on_b >> %s"}
`, a.ConnectString(), b.ConnectString(), undo)), 0o644); err != nil {
		t.Fatal(err)
	}
	apis, _ := startControlPlane(t, dir, tokens)
	cli := func(args ...string) (string, int) {
		return run(t, append(args, "--api", "http://"+apis[1], "--token", opToken, "--output", "json")...)
	}
	must := func(args ...string) {
		t.Helper()
		if out, code := cli(args...); code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
	state := func() map[string]any {
		out, code := cli("status", "--migration", "gated")
		var ms []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 1 {
			t.Fatalf("status: exit %d\n%s", code, out)
		}
		return ms[0]
	}
	waitFor := func(step, status string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			m := state()
			if m["step_name"] == step && m["status"] == status {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("never reached %s %s: %v", step, status, m)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	must("start", "--config", cfg)
	waitFor("1-deploy-b-and-sync", "awaiting-approval")
	time.Sleep(300 * time.Millisecond) // nothing runs without approval
	if m := state(); m["status"] != "awaiting-approval" {
		t.Fatalf("ran without approval: %v", m)
	}
	must("pause")
	must("approve")
	time.Sleep(500 * time.Millisecond) // paused: approved but the executor waits
	if m := state(); m["status"] != "running" || m["paused"] != true {
		t.Fatalf("paused migration moved on: %v", m)
	}
	must("resume")
	waitFor("1-deploy-b-and-sync", "succeeded")
	must("advance", "--phase", "flip", "--confirm")
	must("approve")
	waitFor("flip", "succeeded")
	must("advance", "--phase", "2", "--confirm")
	must("approve")
	if m := waitFor("2-masters-on-b", "succeeded"); m["primary"] != "B" {
		t.Fatalf("primary after the flip: %v", m)
	}
	if out, code := cli("rollback", "--to-phase", "1"); code != exitUsage || !strings.Contains(out, "crosses the flip") {
		t.Fatalf("rollback across the flip without --confirm: exit %d\n%s", code, out)
	}
	must("rollback", "--to-phase", "1", "--confirm")
	m := waitFor("1-deploy-b-and-sync", "succeeded")
	if m["primary"] != "A" || m["epoch"].(float64) != 2 {
		t.Fatalf("after rollback below the flip: %v", m)
	}
	if got, _ := os.ReadFile(undo); string(got) != "masters_on_b\n" {
		t.Fatalf("undo actions ran as %q", got)
	}
	// Forward again: a new flip with a higher epoch.
	must("advance", "--phase", "flip", "--confirm")
	must("approve")
	if m := waitFor("flip", "succeeded"); m["primary"] != "B" || m["epoch"].(float64) != 3 {
		t.Fatalf("flip after rollback: %v", m)
	}
}
