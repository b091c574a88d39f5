package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDemoMigratesMesosUnderChaosWithEveryGuarantee runs `zk-migrate demo
// --short --chaos zk,partition,proxy,control --chaos-at flip,3` as `make
// demo` runs it (a smaller cluster: one agent a side, four tasks, two
// proxies): two real ensembles, three control nodes, proxies in
// two-ensemble mode, the emulated Mesos cluster through them, and the
// whole migration through the control plane to its end, phase 6 included
// (every proxy retires A, no session is left there), under the faults of
// the acceptance scenario at the two moments that matter most without a
// rollback: as the flip begins (inside its barrier and through phase 2)
// and as phase 3 moves the leading master to B. At each, the ZooKeeper
// leader of A and of B is SIGKILLed and restarted, the control-plane
// leader is SIGKILLed and restarted from its data directory, the
// framework host's proxy is SIGKILLed and restarted from its state
// directory, and then cut from B for 4 s (a fault still under way from
// the flip is not injected again in phase 3, said so). The demo's exit
// status and its report must show every guarantee: no task failed, no
// session expired, no Mesos process exited, exactly the one planned
// leader change (A's leader to b-master-1 in phase 3) and no other, never
// two leaders, digests equal, no acknowledged write lost, every direct
// write on A and B, the register workload's history linearizable
// (porcupine); and its output must be the tool's own lines (no client
// library log). It replaced a fault-free run of the same demo: what that
// one asserted beyond this (a flip acknowledged by every proxy, none
// fenced) is the barrier's tests' (control/barrier_proxy_test.go), and a
// third demo run would cost the suite another minute. A failed run's
// directory is kept (its path is logged).
func TestDemoMigratesMesosUnderChaosWithEveryGuarantee(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles, control nodes, proxies and Mesos processes")
	}
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	dir := t.TempDir()
	keepRunOnFailure(t, filepath.Join(dir, "run"))
	sim := filepath.Join(filepath.Dir(bin), "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "../mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}
	out, code := runStdout(t, "demo", "--short", "--chaos", "zk,partition,proxy,control", "--chaos-at", "flip,3",
		"--mesos-sim", sim, "--dir", filepath.Join(dir, "run"))
	if code != 0 {
		for _, name := range []string{"control-c1", "proxy-framework", "framework"} {
			b, _ := os.ReadFile(filepath.Join(dir, "run", name+".log"))
			t.Logf("---- %s:\n%s", name, lastLines(string(b), 15))
		}
		t.Fatalf("demo: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"FAULT: during the flip: zk,control,proxy,partition",
		"FAULT: during phase 3: ",
		"FAULT: SIGKILL ZooKeeper server", "of A (", "of B (",
		"FAULT: SIGKILL control node", "(the control-plane leader)", "restarted from its data directory",
		"FAULT: partition: proxy-framework cut from every server of B", "FAULT: partition of proxy-framework from B healed",
		"FAULT: SIGKILL proxy-framework", "FAULT: proxy-framework restarted from its state directory",
		"5-drain-agents-a       succeeded",
		// Phase 6 beside the dual-writing proxies: each retires A, no
		// session is left there, and the guarantees below hold through it.
		"6-remove-a             running",
		"done                   completed",
		"A retired (phase 6)          3 of 3 proxies retired A, client sessions left on A: 0",
		"tasks failed                 0 ",
		"sessions expired             0 ",
		"Mesos processes exited       0 ",
		"leader changes               1   (planned 1, unplanned 0; expected 1)",
		"two leaders at once          0 of",
		"digests A vs B               EQUAL",
		"acknowledged writes lost     0 ",
		"direct writes lost           0   (must be 0: ",  // the acceptance scenario's writer bypassing the proxies
		"register history             Ok   (must be Ok;", // porcupine: the register workload's history is linearizable
		"verdict                      PASS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's report lacks %q", want)
		}
	}
	// The flip ends with B the primary (at epoch 1, or higher when the
	// faults made its guard abort a flip, run again); the killed proxy may
	// be fenced instead of acknowledging.
	if !regexp.MustCompile(`flip done: epoch \d+, primary B, proxies acknowledged \d of 3, fenced \d`).MatchString(out) {
		t.Errorf("the demo's output lacks the flip to B")
	}
	// The planned change: from A's leader (whichever master of A won the
	// first election: not always a-master-1, a-master-2 was seen on a
	// loaded machine) to B's first master, the lowest json.info_ left.
	if !regexp.MustCompile(`a-master-\d -> b-master-1 during 3-masters-off-a \(planned\)`).MatchString(out) {
		t.Errorf("the demo's report lacks the planned leader change from A's leader to b-master-1 in phase 3")
	}
	// The tool's own lines only: every line is a progress line (the
	// faults' among them), a digest line or the report's.
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" && !strings.HasPrefix(line, "[") && !strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "digest /") &&
			!strings.HasPrefix(line, "migration report") {
			t.Errorf("a line that is not the demo's own: %q", line)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
}

// TestDemoUnderChaosRollsBackWithEveryGuarantee is issue 12's short chaos
// run with a rollback: `demo --short --chaos zk,partition,proxy,control
// --chaos-at flip,rollback --rollback 3` (without `delay`: with B 50 ms
// away under the register workload, phase 1's digests after the rollback
// took up to 2 minutes to meet on a loaded machine, SPEC 5c). As the flip
// begins, inside its barrier, the ZooKeeper leader of A and of B is
// SIGKILLed and restarted, the control-plane leader is SIGKILLed and
// restarted from its data directory (the new leader finishes the flip or
// aborts it, and the demo runs it again), the framework host's proxy is
// SIGKILLed and restarted from its state directory (its clients come back
// to a proxy that may have flipped without them and must find their
// sessions, SPEC 4.10 "Sessions a flip did not move"), and then cut from B
// for 4 s; in the short run those faults spread over phases 2 and 3 and
// the rollback, whose own moment kills the framework host's proxy again
// while the reverse flip runs (the others are still under way, said so).
// After phase 3 the migration is rolled back across the flip to A, while
// the acceptance scenario's direct writer keeps writing A's servers (the
// reverse flip's guard accepts its writes the sync is copying). The report
// must show the faults, both flips, the two planned leader changes (to B
// in phase 3, back to A in the undo of phase 2) and no other, no task
// failed, no session expired, digests equal, every direct write on A and
// B, and the register workload's history linearizable (porcupine): before
// the control plane kept the reverse flip's primary for the replicator,
// the partitioned proxy made the reverse flip wait and the replicator
// copied B's late state over the clients' writes on A (versions no client
// wrote: Illegal). A failed run's directory is kept (its path is logged).
func TestDemoUnderChaosRollsBackWithEveryGuarantee(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles, control nodes, proxies and Mesos processes")
	}
	dir := t.TempDir()
	keepRunOnFailure(t, filepath.Join(dir, "run"))
	sim := filepath.Join(filepath.Dir(bin), "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "../mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}
	out, code := runStdout(t, "demo", "--short", "--chaos", "zk,partition,proxy,control", "--chaos-at", "flip,rollback", "--rollback", "3",
		"--mesos-sim", sim, "--dir", filepath.Join(dir, "run"))
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"FAULT: during the flip: zk,control,proxy,partition",
		"FAULT: during the rollback: ",
		"FAULT: SIGKILL ZooKeeper server", "of A (", "of B (",
		"FAULT: SIGKILL control node", "(the control-plane leader)", "restarted from its data directory",
		"FAULT: partition: proxy-framework cut from every server of B", "FAULT: partition of proxy-framework from B healed",
		"FAULT: SIGKILL proxy-framework", "FAULT: proxy-framework restarted from its state directory",
		"rolled back: primary A (epoch ", // 2, or higher when the faults made the flip's guard abort a flip, run again
		"(the flip, then the rollback's reverse flip)",
		"tasks failed                 0 ",
		"sessions expired             0 ",
		"Mesos processes exited       0 ",
		"leader changes               2   (planned 2, unplanned 0; expected 2)",
		"two leaders at once          0 of",
		"digests A vs B               EQUAL",
		"acknowledged writes lost     0 ",
		"direct writes lost           0   (must be 0: ",  // the acceptance scenario's writer bypassing the proxies
		"register history             Ok   (must be Ok;", // through both faults and both flips
		"verdict                      PASS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the chaos demo's report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
}

// keepRunOnFailure copies a failed demo's run directory (every process's
// log, register.jsonl) out of the test's temporary directory, which is
// removed at its end, and names the copy: a failure under chaos is rare
// and its logs are what explains it.
func keepRunOnFailure(t *testing.T, run string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		kept, err := os.MkdirTemp("", "zkm-failed-"+t.Name()+"-")
		if err == nil {
			err = os.CopyFS(kept, os.DirFS(run))
		}
		if err != nil {
			t.Logf("keeping the failed run's directory: %v", err)
			return
		}
		t.Logf("the failed run's logs are kept in %s", kept)
	})
}
