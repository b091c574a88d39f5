package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// controlNode starts one `zk-migrate control` process and returns its API
// URL; its log goes to DIR/ID.log.
func controlNode(t *testing.T, dir, tokens, id, join string, extra ...string) (string, *exec.Cmd) {
	t.Helper()
	api := freeAddr(t)
	args := []string{"control", "--id", id, "--raft-addr", freeAddr(t), "--api-addr", api,
		"--data-dir", filepath.Join(dir, id), "--tokens", tokens, "--raft-stabilization", "500ms"}
	if join == "" {
		args = append(args, "--bootstrap")
	} else {
		args = append(args, "--join", join)
	}
	cmd := exec.Command(bin, append(args, extra...)...)
	logf, _ := os.Create(filepath.Join(dir, id+".log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, code := run(t, "node", "list", "--api", "http://"+api, "--token", opToken, "--output", "json")
		if code == 0 && strings.Contains(out, `"leader": true`) {
			break
		}
		if time.Now().After(deadline) {
			l, _ := os.ReadFile(filepath.Join(dir, id+".log"))
			t.Fatalf("control node %s never saw a leader: %s\n%s", id, out, l)
		}
	}
	return "http://" + api, cmd
}

type nodeRow struct {
	ID     string `json:"id"`
	Voter  bool   `json:"voter"`
	Leader bool   `json:"leader"`
}

func nodeList(t *testing.T, api string) []nodeRow {
	t.Helper()
	out, code := run(t, "node", "list", "--api", api, "--token", opToken, "--output", "json")
	var rows []nodeRow
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
		t.Fatalf("node list: exit %d\n%s", code, out)
	}
	return rows
}

// waitVoters waits until the cluster behind api has n voters.
func waitVoters(t *testing.T, api string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := 0
		for _, r := range nodeList(t, api) {
			if r.Voter {
				v++
			}
		}
		if v == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %d voters: %+v", n, nodeList(t, api))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func writeTokens(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "tokens")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("%s operator alice\n%s viewer victor\n", opToken, viewerToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMembershipThroughTheCLI: a join to an address where nothing listens
// leaves a one-node control plane leading and writable; real nodes join as
// non-voters and vote once caught up; a dead node is removed with
// `zk-migrate node remove` and the rest keep a quorum.
func TestMembershipThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	api1, _ := controlNode(t, dir, tokens, "c1", "")
	ghost := freeAddr(t)
	req, _ := http.NewRequest(http.MethodPost, api1+"/api/v1/cluster/join",
		strings.NewReader(fmt.Sprintf(`{"id":"ghost","raft_addr":%q,"api":"http://%s"}`, ghost, ghost)))
	req.Header.Set("Authorization", "Bearer "+opToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("join of a ghost: %s", resp.Status)
	}
	if rows := nodeList(t, api1); len(rows) != 1 || !rows[0].Leader || !rows[0].Voter {
		t.Fatalf("after the ghost join: %+v", rows)
	}
	cfg := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(cfg, []byte("migration: {id: m1, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:2\", require_manual_approval: true}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, "start", "--config", cfg, "--api", api1, "--token", opToken); code != 0 {
		t.Fatalf("write after the ghost join: exit %d\n%s", code, out)
	}

	_, _ = controlNode(t, dir, tokens, "c2", api1)
	_, c3 := controlNode(t, dir, tokens, "c3", api1)
	waitVoters(t, api1, 3)
	log1, _ := os.ReadFile(filepath.Join(dir, "c1.log"))
	if !bytes.Contains(log1, []byte("joined as non-voter")) || !bytes.Contains(log1, []byte("promoted to voter")) {
		t.Fatalf("c1 log does not tell the joins:\n%s", log1)
	}

	_ = c3.Process.Kill()
	if out, code := run(t, "node", "remove", "--id", "c3", "--api", api1, "--token", opToken); code != exitUsage {
		t.Fatalf("remove without --confirm: exit %d\n%s", code, out)
	}
	if out, code := run(t, "node", "remove", "--id", "c3", "--confirm", "--api", api1, "--token", viewerToken); code != exitAuth {
		t.Fatalf("remove by a viewer: exit %d\n%s", code, out)
	}
	if out, code := run(t, "node", "remove", "--id", "c3", "--confirm", "--api", api1, "--token", opToken); code != 0 {
		t.Fatalf("remove: exit %d\n%s", code, out)
	}
	rows := nodeList(t, api1)
	if len(rows) != 2 || !rows[0].Voter || !rows[1].Voter {
		t.Fatalf("after removing c3: %+v", rows)
	}
	if out, code := run(t, "pause", "--api", api1, "--token", opToken); code != 0 {
		t.Fatalf("write after the removal: exit %d\n%s", code, out)
	}
}

// TestOperationsThroughTheCLI: secrets never show, status JSON is always a
// list with phase, next action, last error and sync, several --api URLs
// work, a second migration over the same paths is refused, a migration
// rolled back to 0 is deleted and started again, refused calls and failed
// steps are in the audit trail, and the exit codes are the README's.
func TestOperationsThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	api, _ := controlNode(t, dir, tokens, "c1", "")
	apis := "http://" + freeAddr(t) + "," + api // the first answers nothing
	cli := func(tok string, args ...string) (string, int) {
		return run(t, append(args, "--api", apis, "--token", tok)...)
	}
	must := func(args ...string) string {
		t.Helper()
		out, code := cli(opToken, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("m.yaml", `
migration: {id: m1, source_zk: "127.0.0.1:1", target_zk: "127.0.0.1:2", paths: [/mesos], require_manual_approval: true}
sync: {auth: ["digest:mesos:s3cret-pass"]}
alerts: {slack_webhook: "http://127.0.0.1:1/services/xoxSECRET", pagerduty_routing_key: R0UTINGKEY}
`)
	typo := write("typo.yaml", "migration: {id: m9, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:2\", require_manual_aproval: true}\n")
	twin := write("twin.yaml", "migration: {id: m2, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:3\", paths: [/mesos/log_replicas]}\n")

	if out, code := cli(opToken, "start", "--config", typo); code != exitUsage ||
		!strings.Contains(out, "migration.require_manual_aproval: unknown field (did you mean require_manual_approval?)") || strings.Contains(out, "struct") {
		t.Fatalf("typo in the config: exit %d\n%s", code, out)
	}
	if out, code := run(t, "status", "--api", apis); code != exitAuth {
		t.Fatalf("no token: exit %d\n%s", code, out)
	}
	if out, code := cli(opToken, "advance", "--confirm"); code != exitUsage {
		t.Fatalf("missing --phase: exit %d\n%s", code, out)
	}
	must("start", "--config", cfg)
	if out, code := cli(opToken, "start", "--config", twin); code != exitRefused || !strings.Contains(out, "overlaps an active migration") {
		t.Fatalf("second migration over the same paths: exit %d\n%s", code, out)
	}

	status := func(args ...string) []map[string]any {
		t.Helper()
		out, code := cli(viewerToken, append([]string{"status", "--output", "json"}, args...)...)
		var rows []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
			t.Fatalf("status JSON is not a list: exit %d\n%s", code, out)
		}
		for _, s := range []string{"s3cret-pass", "xoxSECRET", "R0UTINGKEY"} {
			if strings.Contains(out, s) {
				t.Fatalf("status shows the secret %q:\n%s", s, out)
			}
		}
		for _, r := range rows {
			for _, k := range []string{"id", "phase", "step_name", "status", "next_action", "last_error", "sync", "primary", "epoch"} {
				if _, ok := r[k]; !ok {
					t.Fatalf("status row lacks %q: %v", k, r)
				}
			}
		}
		return rows
	}
	if rows := status("--migration", "m1"); len(rows) != 1 || rows[0]["next_action"] != "waiting for approval (zk-migrate approve)" {
		t.Fatalf("status of m1: %v", rows)
	}
	must("approve") // phase 1 fails: nothing listens on the ensembles
	var rows []map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for rows = status(); rows[0]["status"] != "failed"; rows = status() {
		if time.Now().After(deadline) {
			t.Fatalf("phase 1 never failed: %v", rows)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if le, _ := rows[0]["last_error"].(string); le == "" || !strings.Contains(rows[0]["next_action"].(string), "failed: ") {
		t.Fatalf("failed migration in status: %v", rows[0])
	}
	if out, code := cli(viewerToken, "delete", "--confirm"); code != exitAuth {
		t.Fatalf("viewer delete: exit %d\n%s", code, out)
	}
	if out, code := cli(opToken, "delete", "--confirm"); code != exitRefused {
		t.Fatalf("delete of an active migration: exit %d\n%s", code, out)
	}
	must("rollback", "--to-phase", "0")
	deadline = time.Now().Add(30 * time.Second)
	for rows = status(); rows[0]["status"] != "pending"; rows = status() {
		if time.Now().After(deadline) {
			t.Fatalf("rollback to 0 never finished: %v", rows)
		}
		time.Sleep(100 * time.Millisecond)
	}
	report := must("report")
	if !strings.Contains(report, "approved by alice") || !strings.Contains(report, "WAITED") || !strings.Contains(report, "1 failure(s)") {
		t.Fatalf("report:\n%s", report)
	}
	if out, code := cli(opToken, "delete"); code != exitUsage {
		t.Fatalf("delete without --confirm: exit %d\n%s", code, out)
	}
	must("delete", "--confirm")
	if rows := status(); len(rows) != 0 {
		t.Fatalf("after delete: %v", rows)
	}
	must("start", "--config", cfg) // the same id again

	audit := must("audit", "--migration", "m1")
	for _, want := range []string{"victor     refused", "DELETE /api/v1/migrations/m1", "step-failed", "failed: ", "alice      delete"} {
		if !strings.Contains(audit, want) {
			t.Fatalf("audit lacks %q:\n%s", want, audit)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(audit), "\n") {
		if strings.Contains(line, "step-failed") && strings.HasSuffix(line, " ok") {
			t.Fatalf("a failed step reads ok: %s", line)
		}
		if f := strings.Fields(line); len(f) > 3 && f[3] != "m1" && f[2] != "refused" {
			t.Fatalf("audit --migration m1 shows another migration: %s", line)
		}
	}
	log1, _ := os.ReadFile(filepath.Join(dir, "c1.log"))
	for _, want := range []string{"raft: leader changed", "migration changed", `"status":"failed"`, "api call refused"} {
		if !bytes.Contains(log1, []byte(want)) {
			t.Fatalf("control log lacks %q:\n%s", want, log1)
		}
	}
	for _, s := range []string{"s3cret-pass", "xoxSECRET", "R0UTINGKEY"} {
		if bytes.Contains(log1, []byte(s)) {
			t.Fatalf("control log shows the secret %q", s)
		}
	}
}

// TestGossipNeedsTheKeyThroughTheCLI: a control node and a proxy that share
// --gossip-key-file form the pool; a proxy started without the key, or with
// another key, cannot join it and is never among the live proxies a flip
// would wait for.
func TestGossipNeedsTheKeyThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	key := func(name string, b byte) string {
		p := filepath.Join(dir, name)
		k := bytes.Repeat([]byte{b}, 32)
		if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, wrong := key("gossip.key", 7), key("other.key", 9)
	gossip := freeAddr(t)
	api, _ := controlNode(t, dir, tokens, "c1", "", "--gossip-addr", gossip, "--gossip-key-file", good)
	cfg := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(cfg, []byte("migration: {id: m1, source_zk: \"127.0.0.1:1\", target_zk: \"127.0.0.1:2\", require_manual_approval: true}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, "start", "--config", cfg, "--api", api, "--token", opToken); code != 0 {
		t.Fatalf("start: exit %d\n%s", code, out)
	}
	proxy := func(name string, extra ...string) *exec.Cmd {
		args := append([]string{"proxy", "--listen", freeAddr(t), "--upstream", "127.0.0.1:1", "--name", name, "--metrics-addr", "",
			"--gossip-addr", freeAddr(t), "--gossip-join", gossip}, extra...)
		cmd := exec.Command(bin, args...)
		logf, _ := os.Create(filepath.Join(dir, name+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
		return cmd
	}
	live := func() []string {
		req, _ := http.NewRequest(http.MethodGet, api+"/api/v1/migrations/m1/health", nil)
		req.Header.Set("Authorization", "Bearer "+viewerToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h struct {
			Detail struct {
				Live []string `json:"live_proxies"`
			} `json:"detail"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h.Detail.Live
	}
	waitFor(t, func() bool { // the control node joins the pool once it runs
		c, err := net.DialTimeout("tcp", gossip, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	proxy("proxy-keyed", "--gossip-key-file", good)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if l := live(); len(l) == 1 && l[0] == "proxy-keyed" {
			break
		}
		if time.Now().After(deadline) {
			pl, _ := os.ReadFile(filepath.Join(dir, "proxy-keyed.log"))
			cl, _ := os.ReadFile(filepath.Join(dir, "c1.log"))
			t.Fatalf("the keyed proxy never joined: live %v\nproxy log:\n%s\ncontrol log:\n%s", live(), pl, cl)
		}
	}

	keyless := proxy("proxy-keyless", "--gossip-insecure")
	wrongKey := proxy("proxy-wrongkey", "--gossip-key-file", wrong)
	for _, c := range []*exec.Cmd{keyless, wrongKey} {
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			name := c.Args[7]
			out, _ := os.ReadFile(filepath.Join(dir, name+".log"))
			if err == nil || !strings.Contains(string(out), "membership: join") {
				t.Fatalf("%s: %v, want a failed gossip join:\n%s", name, err, out)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%v still runs: it did not refuse to run outside the pool", c.Args)
		}
	}
	if l := live(); len(l) != 1 || l[0] != "proxy-keyed" {
		t.Fatalf("live proxies: %v (want only proxy-keyed)", l)
	}
	// A key file others can read is refused before anything starts.
	if err := os.Chmod(good, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, "proxy", "--listen", freeAddr(t), "--upstream", "127.0.0.1:1", "--metrics-addr", "", "--gossip-addr", freeAddr(t),
		"--gossip-key-file", good); code != exitUsage || !strings.Contains(out, "chmod 600") {
		t.Fatalf("world-readable key: exit %d\n%s", code, out)
	}
}
