package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// These tests run real bin/mesos-sim processes (masters, agents, a
// framework) through the local deployer, on real ensembles. There is no
// proxy flip yet (another issue): every Mesos process talks to ensemble B
// directly, standing in for "through its host's proxy, whose primary is B
// after the flip"; the replicator keeps A in sync, so A holds the
// replicator's sessions until phase 6 stops it.

func buildMesosSim(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns n distinct free ports below the ephemeral range (the
// processes bind them much later; see zktest.StablePort).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	for i := 0; i < n; i++ {
		p, err := zktest.StablePort()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// hookReceiver is a real webhook endpoint on loopback collecting bodies.
type hookReceiver struct {
	mu     sync.Mutex
	bodies []string
	url    string
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.bodies = append(h.bodies, string(b))
		h.mu.Unlock()
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	h.url = "http://" + ln.Addr().String() + "/hook"
	return h
}

func (h *hookReceiver) has(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range h.bodies {
		if strings.Contains(b, s) {
			return true
		}
	}
	return false
}

func eventuallyT(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mesosEnv is an emulated Mesos cluster declared in migration.yaml with
// its framework, the two ensembles and the migration.
type mesosEnv struct {
	cfg    *control.Config
	dep    *deployer.Local
	cl     *mesosCluster
	fw     string // the framework's URL
	fwProc *exec.Cmd
	dir    string
	mu     sync.Mutex
	m      control.Migration
	hook   *hookReceiver
}

func (e *mesosEnv) current() *control.Migration {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.m
	return &c
}

func (e *mesosEnv) setStep(s control.Step) {
	e.mu.Lock()
	e.m.Step = s
	e.mu.Unlock()
}

type fwStatus struct {
	Active map[string]int `json:"active"`
	Failed int            `json:"failed"`
}

func (e *mesosEnv) framework(t *testing.T) fwStatus {
	t.Helper()
	var s fwStatus
	resp, err := http.Get(e.fw + "/state")
	if err != nil {
		t.Fatalf("framework state: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *mesosEnv) runningNames(t *testing.T, ps []deployer.Process) string {
	t.Helper()
	run, err := e.cl.running(context.Background(), ps)
	if err != nil {
		t.Fatal(err)
	}
	return names(run)
}

func newMesosEnv(t *testing.T, tasks int) *mesosEnv {
	t.Helper()
	ctx := context.Background()
	bin := buildMesosSim(t)
	var ens [2]*zktest.Ensemble
	for i, name := range []string{"mesos-a", "mesos-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		ens[i] = e
	}
	e := &mesosEnv{dir: t.TempDir(), hook: newHookReceiver(t)}
	ports := freePorts(t, 11)
	proc := func(name, host string) string {
		p := ports[0]
		ports = ports[1:]
		return fmt.Sprintf("{name: %s, host: 127.0.0.1, port: %d, hostname: %s}", name, p, host)
	}
	var sides [2]string
	for i, s := range []string{"a", "b"} {
		sides[i] = fmt.Sprintf("masters: [%s, %s, %s]\n      agents: [%s, %s]",
			proc(s+"-m1", "127.0.0.1"), proc(s+"-m2", "127.0.0.1"), proc(s+"-m3", "127.0.0.1"),
			proc(s+"-ag1", "agent-"+s+"1"), proc(s+"-ag2", "agent-"+s+"2"))
	}
	yaml := fmt.Sprintf(`
migration: {id: mesos, source_zk: %s, target_zk: %s, paths: [/mesos], health_check_interval_sec: 1}
alerts: {slack_webhook: %q}
mesos:
  zk: zk://%s/mesos
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
    master_args: [--agent_ping_timeout=300ms, --max_agent_ping_timeouts=4, --zk_session_timeout=4s]
    agent_args: [--heartbeat=100ms, --zk_session_timeout=4s]
`, ens[0].ConnectString(), ens[1].ConnectString(), e.hook.url, ens[1].ConnectString(), sides[0], sides[1], bin, e.dir)
	cfg, err := control.ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatalf("%v\n%s", err, yaml)
	}
	e.cfg = cfg
	raw, _ := json.Marshal(cfg)
	e.m = control.Migration{ID: "mesos", Config: control.MigrationConfig{Raw: raw}, Primary: "B", Step: control.StepDeployB,
		Status: control.StatusSucceeded}
	dep, err := NewDeployer(cfg.Mesos)
	if err != nil {
		t.Fatal(err)
	}
	e.dep = dep.(*deployer.Local)
	e.cl = newMesosCluster(cfg.Mesos, dep, slog.Default())
	t.Cleanup(func() {
		for _, ps := range [][]deployer.Process{e.cl.masters[0], e.cl.masters[1], e.cl.agents[0], e.cl.agents[1]} {
			for _, p := range ps {
				if pid := e.dep.PID(p); pid != 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				if t.Failed() {
					b, _ := os.ReadFile(filepath.Join(e.dir, p.Name+".log"))
					t.Logf("---- %s:\n%s", p.Name, tailLines(string(b), 15))
				}
			}
		}
	})

	// Mesos as it runs before the migration: A's masters and agents.
	for _, p := range append(append([]deployer.Process{}, e.cl.masters[0]...), e.cl.agents[0]...) {
		if err := dep.Start(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	fwPort := ports[0]
	e.fw = "http://127.0.0.1:" + strconv.Itoa(fwPort)
	fwLog, _ := os.Create(filepath.Join(e.dir, "framework.log"))
	fw := exec.Command(bin, "framework", "--master", cfg.Mesos.ZK, "--port", strconv.Itoa(fwPort), "--tasks", strconv.Itoa(tasks),
		"--churn", "1s", "--zk_session_timeout", "4s", "--history", filepath.Join(e.dir, "history.jsonl"))
	fw.Stdout, fw.Stderr = fwLog, fwLog
	fw.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := fw.Start(); err != nil {
		t.Fatal(err)
	}
	e.fwProc = fw
	t.Cleanup(func() {
		_ = fw.Process.Kill()
		_ = fw.Wait()
		fwLog.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(e.dir, "framework.log"))
			t.Logf("---- framework:\n%s", tailLines(string(b), 15))
		}
	})
	if err := e.cl.poll(ctx, "A's cluster steady", func() error { return e.cl.steady(ctx) }); err != nil {
		t.Fatal(err)
	}
	eventuallyT(t, 60*time.Second, fmt.Sprintf("%d tasks running on A's agents", tasks), func() bool {
		resp, err := http.Get(e.fw + "/state")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var s fwStatus
		return json.NewDecoder(resp.Body).Decode(&s) == nil && s.Active["TASK_RUNNING"] >= tasks
	})
	return e
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestMesosPhasesMoveTheClusterToB runs phases 2 to 6 of a migration with a
// mesos section against an emulated cluster (3 masters and 2 agents on A,
// a framework keeping 6 tasks): after phase 3 the masters are B's and
// exactly one leads; after phase 5 no task runs on A's agents and none
// failed; an agent SIGKILLed undrained loses its tasks (TASK_LOST) and the
// health loop's task_failure alert reaches a real webhook receiver; phase 6
// finds no session on A once the sync stopped. Before that, phases 2 and 3
// are rolled back and run again: the undo brings every A master back.
func TestMesosPhasesMoveTheClusterToB(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and Mesos processes")
	}
	ctx := context.Background()
	e := newMesosEnv(t, 6)
	a, b := e.cl.masters[0], e.cl.masters[1]
	orig, ok := e.cl.leaderProcess(ctx)
	if !ok || orig.Side != "A" {
		t.Fatalf("before phase 2 the leader is %+v; want an A master", orig)
	}

	hctx, stopHub := context.WithCancel(ctx)
	defer stopHub()
	hub := &AlertHub{Ctx: hctx, Logger: slog.Default()}
	sy := &Syncer{Logger: slog.Default(), Alerts: hub.For, Current: func(string) *control.Migration { return e.current() },
		IsLeader: func() bool { return true }}
	if _, err := sy.start(e.current()); err != nil {
		t.Fatal(err)
	}
	defer sy.stop("mesos")
	// The health checks (and their Mesos in-flight checks) run beside the
	// sync, as Supervise starts them on the leader.
	hcfg, err := configOf(e.current())
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	hdone := make(chan struct{})
	go func() { defer close(hdone); sy.watchHealth(hctx, e.current(), hcfg) }()
	defer func() { hcancel(); <-hdone }()
	steps := Steps(sy)
	phase := func(s control.Step) {
		t.Helper()
		e.setStep(s)
		start := time.Now()
		if err := steps[s].Run(ctx, e.current()); err != nil {
			t.Fatalf("%s: run: %v", s, err)
		}
		if err := steps[s].Verify(ctx, e.current()); err != nil {
			t.Fatalf("%s: verify: %v", s, err)
		}
		t.Logf("%s done in %v", s, time.Since(start).Round(time.Millisecond))
	}
	undo := func(s control.Step) {
		t.Helper()
		if err := steps[s].Undo(ctx, e.current()); err != nil {
			t.Fatalf("%s: undo: %v", s, err)
		}
	}
	leader := func() deployer.Process {
		t.Helper()
		lead, _ := e.cl.api.leaders(ctx)
		if len(lead) != 1 {
			t.Fatalf("%d masters answer as leader: %v; want exactly one", len(lead), lead)
		}
		l, _ := e.cl.leaderProcess(ctx)
		return l
	}

	phase(control.StepMastersOnB)
	if got, want := e.runningNames(t, e.cl.allMasters()), names(sortLike(append(b[:2:2], orig), e.cl.allMasters())); got != want {
		t.Fatalf("after phase 2 running masters: %s; want %s (the A leader moves last)", got, want)
	}
	if l := leader(); l.Name != orig.Name {
		t.Fatalf("after phase 2 %s leads; want %s still (not moved yet)", l.Name, orig.Name)
	}
	phase(control.StepMastersOffA)
	if got := e.runningNames(t, e.cl.allMasters()); got != names(b) {
		t.Fatalf("after phase 3 running masters: %s; want B's %s", got, names(b))
	}
	if l := leader(); l.Side != "B" {
		t.Fatalf("after phase 3 %s leads; want a B master", l.Name)
	}

	// Rollback to phase 1 and forward again.
	undo(control.StepMastersOffA)
	undo(control.StepMastersOnB)
	if got := e.runningNames(t, e.cl.allMasters()); got != names(a) {
		t.Fatalf("after undoing phases 3 and 2 running masters: %s; want A's %s", got, names(a))
	}
	if l := leader(); l.Side != "A" {
		t.Fatalf("after the rollback %s leads; want an A master", l.Name)
	}
	phase(control.StepMastersOnB)
	phase(control.StepMastersOffA)
	if got := e.runningNames(t, e.cl.allMasters()); got != names(b) || leader().Side != "B" {
		t.Fatalf("after phases 2 and 3 again running masters: %s; want B's, one of them leading", got)
	}

	phase(control.StepAgentsOnB)
	phase(control.StepDrainAgentsA)
	// Rollback of phases 5 and 4: A's agents come back, B's hand their
	// tasks back and stop; then forward again.
	undo(control.StepDrainAgentsA)
	undo(control.StepAgentsOnB)
	if got := e.runningNames(t, append(append([]deployer.Process{}, e.cl.agents[0]...), e.cl.agents[1]...)); got != names(e.cl.agents[0]) {
		t.Fatalf("after undoing phases 5 and 4 running agents: %s; want A's", got)
	}
	var last string // what was seen, logged if the wait fails
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last seen while waiting for A's agents and tasks: %s", last)
		}
	})
	eventuallyT(t, 60*time.Second, "6 tasks running on A's agents again", func() bool {
		ids, drain, err := e.cl.agentIDs(ctx, 0)
		fw := e.framework(t)
		last = fmt.Sprintf("A agents %v, draining %v, err %v, framework %+v", ids, drain, err, fw)
		if err != nil || len(ids) != 2 || len(drain) != 0 || fw.Active["TASK_RUNNING"] < 6 {
			return false
		}
		active, _, err := e.cl.api.tasks(ctx)
		for _, task := range active {
			if task.AgentID.Value != ids["a-ag1"] && task.AgentID.Value != ids["a-ag2"] {
				last += fmt.Sprintf("; task %s on %s", task.TaskID.Value, task.AgentID.Value)
				return false
			}
		}
		return err == nil
	})

	if s := e.framework(t); s.Failed != 0 {
		t.Fatalf("the rollback of phases 5 and 4 failed tasks: %+v", s)
	}
	phase(control.StepAgentsOnB)
	phase(control.StepDrainAgentsA)
	if got := e.runningNames(t, e.cl.agents[0]); got != "" {
		t.Fatalf("after phase 5 A's agents still run: %s", got)
	}
	idsB, _, err := e.cl.agentIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	active, _, err := e.cl.api.tasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range active {
		if task.AgentID.Value != idsB["b-ag1"] && task.AgentID.Value != idsB["b-ag2"] {
			t.Fatalf("after phase 5 task %s runs on %s, not on B's agents %v", task.TaskID.Value, task.AgentID.Value, idsB)
		}
	}
	// The framework relaunches what the drain killed and keeps killing
	// and launching: a task may be between STAGING and RUNNING right now.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		s := e.framework(t)
		if s.Failed != 0 {
			t.Fatalf("after phase 5 the framework saw a failure: %+v", s)
		}
		if s.Active["TASK_RUNNING"] >= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after phase 5 the framework sees %+v; want 6 running and none failed", s)
		}
	}
	if e.hook.has("task_failure") {
		t.Fatalf("a task_failure alert without a failure: %v", e.hook.bodies)
	}

	// An agent killed undrained: its tasks are LOST, and the alert says so.
	victim := e.cl.agents[1][0]
	if err := syscall.Kill(e.dep.PID(victim), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventuallyT(t, 30*time.Second, "a task_failure alert at the webhook", func() bool { return e.hook.has("TASK_LOST") })
	if s := e.framework(t); s.Failed == 0 {
		t.Fatalf("the framework saw no failure after the SIGKILL: %+v", s)
	}

	// The framework dies and the leading master moves: the new leader
	// knows the framework only from its agents' tasks, not connected.
	_ = e.fwProc.Process.Kill()
	if err := e.dep.Stop(ctx, leader()); err != nil {
		t.Fatal(err)
	}
	eventuallyT(t, 30*time.Second, "a framework_disconnected alert", func() bool { return e.hook.has("framework_disconnected") })

	// Until phase 6 the replicator holds sessions on A, and the check sees them.
	if err := sessionsLeft(e.cfg.Migration.SourceZK); err == nil || !strings.Contains(err.Error(), "sid=0x") {
		t.Fatalf("sessions on A before phase 6: %v; want the replicator's named", err)
	}
	phase(control.StepRemoveA)
	if sy.run("mesos") != nil {
		t.Fatal("phase 6 left the sync running")
	}
	if got := e.runningNames(t, append(append([]deployer.Process{}, a...), e.cl.agents[0]...)); got != "" {
		t.Fatalf("after phase 6 A's processes still run: %s", got)
	}
	// Every master move kept Mesos' quorum rule: no master exited (a
	// master refused for a replica beyond 2q-1 exits 1 and says why).
	for _, p := range e.cl.allMasters() {
		if b, _ := os.ReadFile(filepath.Join(e.dir, p.Name+".log")); strings.Contains(string(b), `"exit_code":1`) {
			t.Errorf("master %s exited with status 1:\n%s", p.Name, tailLines(string(b), 5))
		}
	}
}
