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

	"github.com/zk-migrate/zk-migrate/zktest"
)

// cluster is a migration under test: two real ensembles, three `zk-migrate
// control` processes, and a migration.yaml.
type cluster struct {
	t        *testing.T
	a, b     *zktest.Ensemble
	za, zb   *zk.Conn
	dir, cfg string
	apis     []string
	cmds     []*exec.Cmd
	// hooks are the alerts a webhook receiver got.
	hookMu sync.Mutex
	hooks  []string
}

// alerted reports whether an alert containing s arrived.
func (c *cluster) alerted(s string) bool {
	c.hookMu.Lock()
	defer c.hookMu.Unlock()
	for _, h := range c.hooks {
		if strings.Contains(h, s) {
			return true
		}
	}
	return false
}

func newCluster(t *testing.T, name string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts ZooKeeper and three control nodes")
	}
	c := &cluster{t: t, dir: t.TempDir()}
	c.a, c.b = startPair(t, context.Background(), name)
	for _, z := range []struct {
		e    *zktest.Ensemble
		conn **zk.Conn
	}{{c.a, &c.za}, {c.b, &c.zb}} {
		var err error
		if *z.conn, _, err = zk.Connect(z.e.Addrs(), 10*time.Second, zk.WithLogger(quiet{})); err != nil {
			t.Fatal(err)
		}
		t.Cleanup((*z.conn).Close)
	}
	for _, p := range []string{"/mesos", "/mesos/log_replicas", "/mesos/state"} {
		c.create(c.za, p, "v")
	}
	tokens := filepath.Join(c.dir, "tokens")
	if err := os.WriteFile(tokens, []byte(opToken+" operator alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hookLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hookSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c.hookMu.Lock()
		c.hooks = append(c.hooks, string(b))
		c.hookMu.Unlock()
	})}
	go func() { _ = hookSrv.Serve(hookLn) }()
	t.Cleanup(func() { _ = hookSrv.Close() })
	c.cfg = filepath.Join(c.dir, "migration.yaml")
	if err := os.WriteFile(c.cfg, []byte(fmt.Sprintf(`
migration:
  id: prod
  source_zk: %s
  target_zk: %s
  paths: [/mesos]
sync:
  lag_threshold_ms: 500
alerts:
  slack_webhook: http://%s/hook
`, c.a.ConnectString(), c.b.ConnectString(), hookLn.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	c.apis, c.cmds = startControlPlane(t, c.dir, tokens)
	return c
}

// quiet drops the ZooKeeper client's log lines (B is down on purpose).
type quiet struct{}

func (quiet) Printf(string, ...any) {}

func (c *cluster) create(z *zk.Conn, p, v string) {
	c.t.Helper()
	if _, err := z.Create(p, []byte(v), 0, zk.WorldACL(zk.PermAll)); err != nil {
		c.t.Fatalf("create %s: %v", p, err)
	}
}

// cli runs the CLI against node i.
func (c *cluster) cli(i int, args ...string) (string, int) {
	return run(c.t, append(args, "--api", "http://"+c.apis[i], "--token", opToken)...)
}

func (c *cluster) must(i int, args ...string) string {
	c.t.Helper()
	out, code := c.cli(i, args...)
	if code != 0 {
		c.t.Fatalf("%v on c%d: exit %d\n%s", args, i+1, code, out)
	}
	return out
}

// live lists the nodes whose process runs.
func (c *cluster) live() []int {
	var out []int
	for i, cmd := range c.cmds {
		if cmd.ProcessState == nil {
			out = append(out, i)
		}
	}
	return out
}

// leader returns the index of the leading node, waiting for one.
func (c *cluster) leader() int {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, i := range c.live() {
			var h struct {
				IsLeader bool `json:"is_leader"`
			}
			if c.get(i, "/healthz", &h) == nil && h.IsLeader {
				return i
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("no control-plane leader")
	return -1
}

func (c *cluster) get(i int, path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.apis[i]+path, nil)
	req.Header.Set("Authorization", "Bearer "+opToken)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// kill SIGKILLs node i.
func (c *cluster) kill(i int) {
	_ = c.cmds[i].Process.Kill()
	_ = c.cmds[i].Wait()
}

// restart starts killed node i again with its data directory.
func (c *cluster) restart(i int) {
	c.t.Helper()
	old := c.cmds[i]
	cmd := exec.Command(bin, old.Args[1:]...)
	cmd.Stdout, cmd.Stderr = old.Stdout, old.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c.cmds[i] = cmd
}

// syncRunsOn reports whether node i's replicator runs and replicates.
func (c *cluster) syncRunsOn(i int) bool {
	var st map[string]map[string]any
	if err := c.get(i, "/api/v1/sync/status", &st); err != nil {
		return false
	}
	s := st["prod"]
	return s != nil && s["running"] == true && s["problem"] == nil
}

// migration reads the migration's state from node i.
func (c *cluster) migration(i int) map[string]any {
	c.t.Helper()
	var rows []map[string]any // status --output json is always a list
	out, code := runStdout(c.t, "status", "--migration", "prod", "--output", "json", "--api", "http://"+c.apis[i], "--token", opToken)
	if code != 0 {
		c.t.Fatalf("status on c%d: exit %d\n%s", i+1, code, out)
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		c.t.Fatalf("status: %v (%d rows)\n%s", err, len(rows), out)
	}
	return rows[0]
}

// waitStep waits until node i shows the migration at step with status.
func (c *cluster) waitStep(i int, step, status string) map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		m := c.migration(i)
		if m["step_name"] == step && m["status"] == status {
			return m
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("never reached %s %s: %v", step, status, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventually reports whether cond held within d.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// within waits up to d for cond, failing with what.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func exists(z *zk.Conn, p string) bool {
	ok, _, err := z.Exists(p)
	return err == nil && ok
}

// equalOnBoth waits until validate finds A and B equal under /mesos.
func (c *cluster) equalOnBoth(d time.Duration) {
	c.t.Helper()
	var out string
	deadline := time.Now().Add(d)
	for {
		var code int
		out, code = run(c.t, "validate", "--source", c.a.ConnectString(), "--target", c.b.ConnectString(), "--paths", "/mesos")
		if code == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("A and B not equal within %v:\n%s", d, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// auditHas reports whether the audit trail read from node i has an entry
// with action and all of the given substrings in its detail.
func (c *cluster) auditHas(i int, action string, detail ...string) bool {
	var entries []struct {
		Action, Detail, Result, By string
	}
	if err := c.get(i, "/api/v1/audit", &entries); err != nil {
		return false
	}
next:
	for _, e := range entries {
		if e.Action != action || e.Result != "ok" {
			continue
		}
		for _, d := range detail {
			if !strings.Contains(e.Detail, d) {
				continue next
			}
		}
		return true
	}
	return false
}

// TestSyncFollowsTheControlLeader kills the control leader (SIGKILL) in
// phase 1, then again while writers write on A and on B: each time the new
// leader runs the sync within 10 s, writes on either side reach the other,
// nothing is lost, the digests end equal, a master's ephemeral node on A
// survives the old replicator's session expiring, and the audit trail shows
// the gap. Then, with no leader left (quorum lost), validate --phase
// current on the surviving follower says phase 1 is not healthy.
func TestSyncFollowsTheControlLeader(t *testing.T) {
	c := newCluster(t, "fo1")
	// A Mesos master on A: an ephemeral sequential node its session holds.
	master, err := c.za.Create("/mesos/json.info_", []byte(`{"id":"m1"}`), zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll))
	if err != nil {
		t.Fatal(err)
	}
	c.must(2, "start", "--config", c.cfg)
	c.waitStep(2, "1-deploy-b-and-sync", "succeeded")
	first := c.leader()
	if !c.auditHas(2, "sync-started", "node=c"+fmt.Sprint(first+1), "initial copy") {
		t.Fatalf("no sync-started entry for c%d", first+1)
	}

	// 1. SIGKILL the leader in phase 1.
	c.kill(first)
	killed := time.Now()
	second := c.leader()
	within(t, 10*time.Second-time.Since(killed), "sync runs on the new leader", func() bool { return c.syncRunsOn(second) })
	t.Logf("sync runs on c%d %v after the kill", second+1, time.Since(killed).Round(time.Millisecond))
	c.create(c.za, "/mesos/after-kill-on-a", "a")
	c.create(c.zb, "/mesos/after-kill-on-b", "b")
	within(t, 10*time.Second, "writes cross both ways", func() bool {
		return exists(c.zb, "/mesos/after-kill-on-a") && exists(c.za, "/mesos/after-kill-on-b")
	})
	// Recorded through Raft right after the start, which the writes
	// crossing need not wait for: wait for the records too.
	if !eventually(10*time.Second, func() bool {
		return c.auditHas(second, "sync-stopped", fmt.Sprintf("node=c%d", first+1)) &&
			c.auditHas(second, "sync-started", fmt.Sprintf("node=c%d", second+1), "resumed")
	}) {
		out, _ := c.cli(second, "audit")
		t.Fatalf("the gap is not in the audit trail:\n%s", out)
	}
	if !eventually(10*time.Second, func() bool { return c.alerted("sync_stopped") }) {
		c.hookMu.Lock()
		hooks := strings.Join(c.hooks, "\n")
		c.hookMu.Unlock()
		log, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("c%d.log", second+1)))
		t.Fatalf("no sync_stopped alert; alerts:\n%s\nlog of c%d:\n%s", hooks, second+1, log)
	}
	if m := c.migration(second); m["step_name"] != "1-deploy-b-and-sync" || m["status"] != "succeeded" {
		t.Fatalf("after the failover: %v", m)
	}
	// status shows the sync the new leader runs: running, lag, digests.
	if !eventually(10*time.Second, func() bool {
		sy, _ := c.migration(second)["sync"].(map[string]any)
		eq, _ := sy["digests_equal"].(map[string]any)
		return sy["running"] == true && sy["lag_a_to_b_ms"] != nil && eq["/mesos"] == true
	}) {
		t.Fatalf("status --output json does not show the running sync: %v", c.migration(second)["sync"])
	}

	// 2. The killed node comes back; a write stream runs on A and on B;
	// the leader is killed again in the middle of it.
	c.restart(first)
	within(t, 30*time.Second, "the restarted node serves", func() bool {
		_, code := c.cli(first, "status")
		return code == 0
	})
	var mu sync.Mutex
	var acked []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range []struct {
		side string
		z    *zk.Conn
	}{{"a", c.za}, {"b", c.zb}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				p := fmt.Sprintf("/mesos/state/%s-%04d", w.side, n)
				if _, err := w.z.Create(p, []byte(p), 0, zk.WorldACL(zk.PermAll)); err == nil {
					mu.Lock()
					acked = append(acked, p)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(time.Second)
	leader := c.leader()
	c.kill(leader)
	killed = time.Now()
	third := c.leader()
	within(t, 10*time.Second-time.Since(killed), "sync runs on the new leader during the write stream", func() bool { return c.syncRunsOn(third) })
	t.Logf("sync runs on c%d %v after the second kill", third+1, time.Since(killed).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	// The old replicator's sessions expire (10 s) with their copies of
	// ephemeral nodes: the master's node on A must stay, and its copy on B
	// come back.
	time.Sleep(time.Until(killed.Add(13 * time.Second)))
	c.equalOnBoth(20 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range acked {
		if !exists(c.za, p) || !exists(c.zb, p) {
			t.Fatalf("acknowledged write %s lost (A %v, B %v) of %d", p, exists(c.za, p), exists(c.zb, p), len(acked))
		}
	}
	if !exists(c.za, master) || !exists(c.zb, master) {
		t.Fatalf("the master's ephemeral %s: on A %v, on B %v", master, exists(c.za, master), exists(c.zb, master))
	}
	t.Logf("%d acknowledged writes on both sides", len(acked))

	// 3. Item 4: with no leader (one node of three left), the follower
	// does not call phase 1 healthy.
	var survivor int
	for _, i := range c.live() {
		if i != third {
			survivor = i
		}
	}
	within(t, 15*time.Second, "validate healthy with the sync running (the next reconcile sees equal digests)", func() bool {
		_, code := c.cli(survivor, "validate", "--phase", "current")
		return code == 0
	})
	c.kill(third)
	within(t, 10*time.Second, "validate on the follower says NOT healthy", func() bool {
		out, code := c.cli(survivor, "validate", "--phase", "current")
		return code == exitDifferent && strings.Contains(out, "NOT healthy") && strings.Contains(out, "sync")
	})
	out, _ := c.cli(survivor, "validate", "--phase", "current")
	t.Log(out)
	if out := c.must(survivor, "status"); !strings.Contains(out, "SYNC NOT RUNNING") {
		t.Fatalf("status without a leader:\n%s", out)
	}
}

// TestFlipRefusedWhileTheSyncCannotReachB: with B unreachable from the
// replicator, validate --phase current says phase 1 is not healthy (also on
// a follower), and advance --phase flip is refused with the reason (exit
// 4); the primary stays A. Once B is back the flip goes through.
func TestFlipRefusedWhileTheSyncCannotReachB(t *testing.T) {
	c := newCluster(t, "fo2")
	c.must(2, "start", "--config", c.cfg)
	c.waitStep(2, "1-deploy-b-and-sync", "succeeded")
	follower := (c.leader() + 1) % 3
	if err := c.b.Kill(1); err != nil {
		t.Fatal(err)
	}
	within(t, 15*time.Second, "validate on a follower says NOT healthy", func() bool {
		out, code := c.cli(follower, "validate", "--phase", "current")
		return code == exitDifferent && strings.Contains(out, "NOT healthy") && strings.Contains(out, "not replicating")
	})
	out, code := c.cli(follower, "advance", "--phase", "flip", "--confirm")
	// The replicator either runs without reaching B (no heartbeat) or is
	// between two attempts to reach it (not running): both refuse.
	why := strings.Contains(out, "no heartbeat from A has reached B") || strings.Contains(out, "the replicator is not running")
	if code != exitRefused || !strings.Contains(out, "flip refused") || !why {
		t.Fatalf("flip with B unreachable: exit %d\n%s", code, out)
	}
	t.Log(strings.TrimSpace(out))
	if m := c.migration(follower); m["step_name"] != "1-deploy-b-and-sync" || m["primary"] != "A" {
		t.Fatalf("after the refused flip: %v", m)
	}
	if err := c.b.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	within(t, 30*time.Second, "phase 1 healthy again", func() bool {
		_, code := c.cli(follower, "validate", "--phase", "current")
		return code == 0
	})
	c.must(follower, "advance", "--phase", "flip", "--confirm")
	if m := c.waitStep(follower, "flip", "succeeded"); m["primary"] != "B" {
		t.Fatalf("after the flip: %v", m)
	}
}

// TestRollbackAcrossTheFlipKeepsWritesMadeOnB: the flip raises B's sequence
// counters to A's (the next sequential node on B sorts above every one made
// on A). After the flip, writes land
// on B (and, while the control leader is down, a conflicting write on both
// sides); rolling back across the flip is a guarded reverse flip that
// deletes nothing: every write made on B is on A afterwards, both sides end
// equal, and the conflict is in the audit trail.
func TestRollbackAcrossTheFlipKeepsWritesMadeOnB(t *testing.T) {
	c := newCluster(t, "fo3")
	c.create(c.za, "/mesos/contended", "before")
	c.must(2, "start", "--config", c.cfg)
	c.waitStep(2, "1-deploy-b-and-sync", "succeeded")
	// Sequential nodes created and deleted on A in one multi: the
	// replicator sees only the last, so B's counter under log_replicas is
	// behind A's. The flip's guard raises it.
	var ops []any
	for i := 0; i < 5; i++ {
		p := fmt.Sprintf("/mesos/log_replicas/r_%010d", i)
		ops = append(ops, &zk.CreateRequest{Path: "/mesos/log_replicas/r_", Data: []byte("x"), Acl: zk.WorldACL(zk.PermAll), Flags: zk.FlagSequence})
		if i < 4 {
			ops = append(ops, &zk.DeleteRequest{Path: p, Version: -1})
		}
	}
	if _, err := c.za.Multi(ops...); err != nil {
		t.Fatal(err)
	}
	within(t, 10*time.Second, "the last sequential node reaches B", func() bool { return exists(c.zb, "/mesos/log_replicas/r_0000000004") })
	c.must(2, "advance", "--phase", "flip", "--confirm")
	c.waitStep(2, "flip", "succeeded")
	if name, err := c.zb.Create("/mesos/log_replicas/r_", nil, zk.FlagSequence, zk.WorldACL(zk.PermAll)); err != nil || name <= "/mesos/log_replicas/r_0000000004" {
		t.Fatalf("first sequential node on B after the flip: %s (%v), want above r_0000000004", name, err)
	}
	c.must(2, "advance", "--phase", "2", "--confirm")
	c.waitStep(2, "2-masters-on-b", "succeeded")
	var onB []string
	for i := 0; i < 20; i++ {
		p := fmt.Sprintf("/mesos/state/written-on-b-%02d", i)
		c.create(c.zb, p, "b")
		onB = append(onB, p)
	}
	// The control leader dies; while no sync runs, the same znode is
	// written on both sides.
	leader := c.leader()
	c.kill(leader)
	if _, err := c.za.Set("/mesos/contended", []byte("written on A"), -1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.zb.Set("/mesos/contended", []byte("written on B"), -1); err != nil {
		t.Fatal(err)
	}
	for i := 20; i < 30; i++ {
		p := fmt.Sprintf("/mesos/state/written-on-b-%02d", i)
		c.create(c.zb, p, "b")
		onB = append(onB, p)
	}
	next := c.leader()
	within(t, 10*time.Second, "sync runs on the new leader", func() bool { return c.syncRunsOn(next) })
	within(t, 10*time.Second, "the conflict is in the audit trail", func() bool {
		return c.auditHas(next, "conflict", "/mesos/contended")
	})
	c.must(next, "rollback", "--to-phase", "1", "--confirm")
	m := c.waitStep(next, "1-deploy-b-and-sync", "succeeded")
	if m["primary"] != "A" {
		t.Fatalf("after the rollback: %v", m)
	}
	for _, p := range onB {
		if !exists(c.za, p) || !exists(c.zb, p) {
			t.Fatalf("write %s made on B: on A %v, on B %v after the rollback", p, exists(c.za, p), exists(c.zb, p))
		}
	}
	c.equalOnBoth(15 * time.Second)
	va, _, _ := c.za.Get("/mesos/contended")
	t.Logf("the contended znode holds %q on both sides", va)
	if !c.auditHas(next, "rolled-back") {
		t.Fatal("no rolled-back entry")
	}
}
