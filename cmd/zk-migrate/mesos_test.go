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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestMesosPhasesThroughTheCLI migrates an emulated Mesos cluster (real
// bin/mesos-sim processes started by the control plane's local deployer)
// with three `zk-migrate control` processes and the CLI. The proxies' flip
// is another issue, so every Mesos process talks to ensemble B directly,
// as it would through its proxy after the flip, and the cluster is started
// once the flip is done. The sync covers /frameworks, not /mesos: without
// the proxies' dual-write the replicator would be the only writer of
// Mesos' znodes on A, and across the control leader kill below it can copy
// a znode deleted on B back from A (SPEC.md 8, the sync checkpoint): a
// ghost log replica, which makes the next new master exit by the quorum
// rule. The replicator still holds sessions on A until phase 6. The
// control leader is SIGKILLed while phase 2 moves masters: the new leader
// repeats the phase from what runs and finishes it. After phase 3 only B's
// masters run and exactly one leads; after phase 5 no task runs on A's
// agents and none failed; an agent SIGKILLed undrained loses its tasks and
// the task_failure alert reaches a real webhook; phase 6 completes with no
// session left on A.
func TestMesosPhasesThroughTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper, three control nodes and Mesos processes")
	}
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "mesos")
	dir := t.TempDir()
	sim := filepath.Join(dir, "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "../mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}
	tokens := writeTokens(t, dir)

	var hookMu sync.Mutex
	var hooks []string
	hookLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hookSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hookMu.Lock()
		hooks = append(hooks, string(body))
		hookMu.Unlock()
	})}
	go func() { _ = hookSrv.Serve(hookLn) }()
	defer hookSrv.Close()
	alerted := func(s string) bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		for _, h := range hooks {
			if strings.Contains(h, s) {
				return true
			}
		}
		return false
	}

	port := func() int { // below the ephemeral range: the processes bind it much later
		p, err := zktest.StablePort()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var procs [2]struct{ masters, agents []deployer.Process }
	var sides [2]string
	for i, s := range []string{"a", "b"} {
		var ms, ags []string
		for j := 1; j <= 3; j++ {
			p := deployer.Process{Kind: deployer.Master, Name: fmt.Sprintf("%s-m%d", s, j), Host: "127.0.0.1", Port: port(), Hostname: "127.0.0.1"}
			procs[i].masters = append(procs[i].masters, p)
			ms = append(ms, fmt.Sprintf("{name: %s, host: 127.0.0.1, port: %d}", p.Name, p.Port))
		}
		for j := 1; j <= 2; j++ {
			p := deployer.Process{Kind: deployer.Agent, Name: fmt.Sprintf("%s-ag%d", s, j), Host: "127.0.0.1", Port: port(), Hostname: fmt.Sprintf("agent-%s%d", s, j)}
			procs[i].agents = append(procs[i].agents, p)
			ags = append(ags, fmt.Sprintf("{name: %s, host: 127.0.0.1, port: %d, hostname: %s}", p.Name, p.Port, p.Hostname))
		}
		sides[i] = fmt.Sprintf("masters: [%s]\n      agents: [%s]", strings.Join(ms, ", "), strings.Join(ags, ", "))
	}
	fwPort := strconv.Itoa(port())
	run := filepath.Join(dir, "mesos")
	zkURL := "zk://" + b.ConnectString() + "/mesos"
	masterArgs := []string{"--agent_ping_timeout=300ms", "--max_agent_ping_timeouts=4", "--zk_session_timeout=4s"}
	agentArgs := []string{"--heartbeat=100ms", "--zk_session_timeout=4s"}
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
migration: {id: prod, source_zk: %s, target_zk: %s, paths: [/frameworks], health_check_interval_sec: 1}
alerts: {slack_webhook: "http://%s/hook"}
mesos:
  zk: %s
  timeout_sec: 60
  sides:
    a:
      %s
    b:
      %s
  deployer:
    kind: local
    binary: %s
    dir: %s
    master_args: [%s]
    agent_args: [%s]
`, a.ConnectString(), b.ConnectString(), hookLn.Addr(), zkURL, sides[0], sides[1], sim, run,
		strings.Join(masterArgs, ", "), strings.Join(agentArgs, ", "))), 0o644); err != nil {
		t.Fatal(err)
	}
	// The test's view of the same processes (what the control plane started).
	dep := &deployer.Local{Binary: sim, Dir: run, ZK: zkURL, Quorum: 2, MasterArgs: masterArgs, AgentArgs: agentArgs}
	all := append(append(append(append([]deployer.Process{}, procs[0].masters...), procs[1].masters...), procs[0].agents...), procs[1].agents...)
	t.Cleanup(func() {
		for _, p := range all {
			if pid := dep.PID(p); pid != 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(run, p.Name+".log"))
				t.Logf("---- %s:\n%s", p.Name, lastLines(string(b), 10))
			}
		}
	})
	running := func(ps []deployer.Process) string {
		var out []string
		for _, p := range ps {
			if ok, _ := dep.Running(ctx, p); ok {
				out = append(out, p.Name)
			}
		}
		return strings.Join(out, ",")
	}

	apis, cmds := startControlPlane(t, dir, tokens) // its ports (ephemeral range) cannot be the Mesos ones (below it)
	api := "http://" + apis[2]
	cli := func(args ...string) string {
		t.Helper()
		out, code := run2(t, api, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	waitStatus := func(step, status string) {
		t.Helper()
		var out string
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			out, _ = run2(t, api, "status")
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) >= 4 && f[0] == "prod" && f[2] == step && f[3] == status {
					return
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("status never showed %s %s:\n%s", step, status, out)
	}

	cli("start", "--config", cfg)
	waitStatus("1-deploy-b-and-sync", "succeeded")
	// The flip's guard may refuse (exit 4) while the leader's sync has not
	// yet seen a heartbeat cross each way: refused with the reason, then
	// accepted, as an operator would retry.
	within(t, 30*time.Second, "the flip accepted", func() bool {
		out, code := run2(t, api, "advance", "--phase", "flip", "--confirm")
		if code != 0 && (code != 4 || !strings.Contains(out, "flip refused")) {
			t.Fatalf("advance --phase flip: exit %d\n%s", code, out)
		}
		return code == 0
	})
	waitStatus("flip", "succeeded")

	// Mesos as it runs before its move: A's masters and agents, a framework.
	for _, p := range append(append([]deployer.Process{}, procs[0].masters...), procs[0].agents...) {
		if err := dep.Start(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	fwAddr := "127.0.0.1:" + fwPort
	fw := exec.Command(sim, "framework", "--master", zkURL, "--port", fwPort, "--tasks", "6", "--churn", "1s", "--zk_session_timeout", "4s")
	fwLog, _ := os.Create(filepath.Join(dir, "framework.log"))
	fw.Stdout, fw.Stderr = fwLog, fwLog
	fw.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := fw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Process.Kill(); _ = fw.Wait(); fwLog.Close() })
	type fwState struct {
		Active map[string]int `json:"active"`
		Failed int            `json:"failed"`
	}
	framework := func() fwState {
		var s fwState
		if resp, err := http.Get("http://" + fwAddr + "/state"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&s)
			resp.Body.Close()
		}
		return s
	}
	within(t, 60*time.Second, "6 tasks running on A's agents", func() bool { return framework().Active["TASK_RUNNING"] >= 6 })

	// Phase 2, the control leader killed while it moves masters.
	cli("advance", "--phase", "2", "--confirm")
	within(t, 30*time.Second, "phase 2 stopping an A master", func() bool { return running(procs[0].masters) != "a-m1,a-m2,a-m3" })
	api = killLeader(t, apis, cmds)
	waitStatus("2-masters-on-b", "succeeded")
	if got := running(procs[1].masters); got != "b-m1,b-m2" {
		t.Fatalf("after phase 2 B's masters running: %q; want b-m1,b-m2", got)
	}
	cli("advance", "--phase", "3", "--confirm")
	waitStatus("3-masters-off-a", "succeeded")
	if got := running(append(append([]deployer.Process{}, procs[0].masters...), procs[1].masters...)); got != "b-m1,b-m2,b-m3" {
		t.Fatalf("after phase 3 running masters: %q; want B's", got)
	}
	leaders := 0
	for _, p := range procs[1].masters {
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		if resp, err := c.Get(p.URL() + "/master/state"); err == nil {
			if resp.StatusCode == http.StatusOK {
				leaders++
			}
			resp.Body.Close()
		}
	}
	if leaders != 1 {
		t.Fatalf("after phase 3 %d of B's masters answer as leader; want exactly one", leaders)
	}
	cli("advance", "--phase", "4", "--confirm")
	waitStatus("4-agents-on-b", "succeeded")
	cli("advance", "--phase", "5", "--confirm")
	waitStatus("5-drain-agents-a", "succeeded")
	if got := running(procs[0].agents); got != "" {
		t.Fatalf("after phase 5 A's agents still run: %s", got)
	}
	// The framework relaunches what the drain killed: a task may be on
	// its way to RUNNING right now.
	within(t, 15*time.Second, "6 tasks running again after phase 5", func() bool {
		s := framework()
		if s.Failed != 0 {
			t.Fatalf("after phase 5 the framework saw a failure: %+v", s)
		}
		return s.Active["TASK_RUNNING"] >= 6
	})
	if alerted("task_failure") {
		t.Fatal("task_failure alerted without a failure")
	}

	// An agent dies undrained: its tasks are LOST and the alert goes out.
	if err := syscall.Kill(dep.PID(procs[1].agents[0]), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	within(t, 30*time.Second, "a task_failure alert naming TASK_LOST", func() bool { return alerted("task_failure") && alerted("TASK_LOST") })

	cli("advance", "--phase", "6", "--confirm")
	waitStatus("done", "completed")
	if got := running(append(append([]deployer.Process{}, procs[0].masters...), procs[0].agents...)); got != "" {
		t.Fatalf("after phase 6 A's processes run: %s", got)
	}
}

// run2 runs the CLI against api with the operator token.
func run2(t *testing.T, api string, args ...string) (string, int) {
	t.Helper()
	return run(t, append(args, "--api", api, "--token", opToken)...)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
