package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/deployer"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// chromiumPath finds headless Chromium (Debian's chromium package), or
// skips the test with the install hint; in CI (CI set), where
// scripts/deps.sh installs it, its absence fails the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI must run the browser test: scripts/deps.sh installs it (apt-get install chromium)")
	}
	t.Skip("chromium is not installed: apt-get install chromium (or bash scripts/deps.sh) to run the dashboard's browser test")
	return ""
}

// artefactDir is where the browser test saves its screenshots:
// $ZKM_ARTEFACTS, or zkm-dashboard-artefacts under the temp directory. It
// is kept after the test (CI uploads it) and printed.
func artefactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ZKM_ARTEFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "zkm-dashboard-artefacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "dashboard screenshots in %s\n", dir)
	t.Logf("dashboard screenshots in %s", dir)
	return dir
}

// tab is one browser tab on one control node's dashboard.
type tab struct {
	t   *testing.T
	ctx context.Context
	dir string
}

// newTab opens a tab (its own session storage) in the browser of parent.
// The first action on a context starts its tab and must run without a
// timeout (a timeout there would close it); later ones are bounded.
func newTab(t *testing.T, parent context.Context, dir string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(parent)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("browser: %v", err)
	}
	return &tab{t: t, ctx: ctx, dir: dir}
}

func (b *tab) run(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// js evaluates a JavaScript expression in the page and returns its value
// as a string.
func (b *tab) js(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	out, err := chromedp.Run(ctx, chromedp.Evaluate[string]("String("+expr+")"))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", expr, err)
	}
	return out
}

// text is an element's text.
func (b *tab) text(id string) string {
	return b.js(fmt.Sprintf(`(document.getElementById(%q) || {}).textContent`, id))
}

// until waits, up to d, for the page to satisfy cond (polled), failing
// with what and the page's state.
func (b *tab) until(d time.Duration, what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			b.shot("failed")
			b.t.Fatalf("page: not within %v: %s\nbanner: %q\nwaiting: %q\nactions: %q", d, what,
				b.text("banner"), b.text("waiting"), b.text("actions"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shot saves a full-page screenshot as NAME.png in the artefact directory.
func (b *tab) shot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	p := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// open loads the dashboard of the node at api and logs in with token.
func (b *tab) open(api, token string) {
	b.t.Helper()
	b.run(chromedp.Navigate(api+"/"), chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("login-button")),
		chromedp.WaitVisible(chromedp.ID("dash")))
	if strings.Contains(b.js("location.href"), token) {
		b.t.Fatal("the token is in the page's URL")
	}
	// A mark that a reload would wipe: the page must stay live without one.
	b.js("window.zkmNoReload = 'kept'")
	b.js("performance.setResourceTimingBufferSize(1000000)") // every URL the page fetches
}

// tokenNotInURLs checks every URL the page has requested (the resource
// timing entries: its files and every completed API call; the event
// stream's request never completes, so it is not among them) for the
// token.
func (b *tab) tokenNotInURLs(token string) {
	b.t.Helper()
	urls := b.js(`performance.getEntriesByType("resource").map(e => e.name).join("\n")`)
	if !strings.Contains(urls, "/health") || !strings.Contains(urls, "/api/v1/whoami") {
		b.t.Fatalf("the page's requests are not recorded:\n%s", urls)
	}
	if strings.Contains(urls, token) {
		b.t.Fatalf("a URL the page requested carries the token:\n%s", urls)
	}
}

func (b *tab) notReloaded() {
	b.t.Helper()
	if got := b.js("window.zkmNoReload"); got != "kept" {
		b.t.Fatalf("the page was reloaded (mark %q)", got)
	}
}

// TestDashboardInABrowser drives the dashboard in headless Chromium during a
// live migration: real ensembles (A of three servers, B), three `zk-migrate
// control` processes in a gossip pool with a `zk-migrate proxy` and a
// client session through it. As operator, on the leader's page, phase 1
// waits for approval; pressing Approve starts it and the page follows it to
// success; the flip entered from the CLI shows up without a reload, is
// approved from the page and completes with the proxy on epoch 1. A viewer
// sees the same state and no button. Killing the leader (the page's own
// node) raises the error banner and disables the buttons; killing the
// third node leaves the viewer's follower without a leader, and its page
// says so; restarting both clears both banners and the pages show a
// leader. Screenshots go to artefactDir.
func TestDashboardInABrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper, three control nodes, a proxy and a browser")
	}
	chromium := chromiumPath(t)
	shots := artefactDir(t)
	ctx := context.Background()
	a, err := zktest.Start(ctx, zktest.Config{Servers: 3, Name: "dash-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "dash-b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	za, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	defer za.Close()
	for _, p := range []string{"/mesos", "/mesos/log_replicas", "/mesos/state"} {
		if _, err := za.Create(p, []byte("v"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	proxyTok := filepath.Join(dir, "proxy.token")
	if err := os.WriteFile(proxyTok, []byte("0123456789abcdef-proxy-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var apis []string
	var cmds []*exec.Cmd
	var gossip []string
	for i := 1; i <= 3; i++ {
		g := freeAddr(t)
		extra := []string{"--gossip-addr", g, "--gossip-insecure", "--proxy-token-file", proxyTok}
		join := ""
		if i > 1 {
			extra = append(extra, "--gossip-join", gossip[0])
			join = apis[0]
		}
		api, cmd := controlNode(t, dir, tokens, fmt.Sprintf("c%d", i), join, extra...)
		apis, cmds, gossip = append(apis, api), append(cmds, cmd), append(gossip, g)
	}
	waitVoters(t, apis[0], 3)
	cl := &cluster{t: t, a: a, b: b, dir: dir, cmds: cmds}
	for _, api := range apis {
		cl.apis = append(cl.apis, strings.TrimPrefix(api, "http://"))
	}

	// A proxy in the pool, with a client session through it.
	listen := freeAddr(t)
	px := exec.Command(bin, "proxy", "--listen", listen, "--source", a.ConnectString(), "--target", b.ConnectString(),
		"--admin-addr", freeAddr(t), "--admin-token-file", proxyTok, "--metrics-addr", "", "--name", "proxy-1",
		"--gossip-addr", freeAddr(t), "--gossip-join", gossip[0], "--gossip-insecure")
	pxLog := &syncBuffer{}
	px.Stdout, px.Stderr = pxLog, pxLog
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = px.Process.Kill()
		_ = px.Wait()
		if t.Failed() {
			t.Logf("proxy log:\n%s", pxLog.String())
		}
	})
	zp, _, err := zk.Connect([]string{listen}, 10*time.Second, zk.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	defer zp.Close()
	waitFor(t, func() bool {
		_, err := zp.Create("/mesos/state/through-proxy", []byte("x"), 0, zk.WorldACL(zk.PermAll))
		return err == nil || err == zk.ErrNodeExists
	})

	// An emulated Mesos cluster on A (its own path, outside the synced
	// one: it is there for the task counts, and its churn would only slow
	// the flip's guard): a master and two agents on A, a framework keeping
	// four tasks; B's master and agent are configured, not started.
	mesos := startDashboardMesos(t, dir, "zk://"+a.ConnectString()+"/mesos-sim")

	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
migration:
  id: prod
  source_zk: %s
  target_zk: %s
  paths: [/mesos]
  require_manual_approval: true
  health_check_interval_sec: 1
sync:
  lag_threshold_ms: 500
%s`, a.ConnectString(), b.ConnectString(), mesos)), 0o644); err != nil {
		t.Fatal(err)
	}
	cl.must(0, "start", "--config", cfg)
	cl.waitStep(0, "1-deploy-b-and-sync", "awaiting-approval")

	// The browser: headless Chromium, one tab per role.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 1000))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	op := newTab(t, actx, shots)
	leader := cl.leader()
	op.open(apis[leader], opToken)

	// Phase 1 waits for approval: the page says so and offers Approve.
	op.until(30*time.Second, "phase 1 awaiting approval with an Approve button", func() bool {
		return strings.Contains(op.text("waiting"), "approval") && op.js(`!!document.getElementById("btn-approve")`) == "true"
	})
	if a := op.text("approvals"); !strings.Contains(a, "Approvals waiting: prod (1-deploy-b-and-sync)") {
		t.Fatalf("approvals: %q", a)
	}
	if cur := op.js(`document.querySelector("#timeline li.current").dataset.step`); cur != "1" {
		t.Fatalf("current step on the timeline: %s", cur)
	}
	op.shot("1-awaiting-approval")
	op.run(chromedp.Click(chromedp.ID("btn-approve")))
	op.until(20*time.Second, "approve accepted", func() bool { return strings.Contains(op.text("action-result"), "approve: accepted") })
	op.until(90*time.Second, "phase 1 succeeded after the approval", func() bool {
		return strings.Contains(op.text("waiting"), "1-deploy-b-and-sync, succeeded")
	})
	if m := cl.migration(0); m["status"] != "succeeded" {
		t.Fatalf("the page shows phase 1 succeeded, the API: %v", m)
	}
	op.until(20*time.Second, "the audit tail shows alice's approval", func() bool {
		return strings.Contains(op.text("audit"), "aliceapprove")
	})
	op.notReloaded()

	// The flip, entered from the CLI: the page follows without a reload.
	// The flip's guard may refuse (exit 4) until the leader's sync has seen
	// a heartbeat cross each way: an operator retries.
	within(t, 30*time.Second, "the flip accepted", func() bool {
		out, code := cl.cli(0, "advance", "--phase", "flip", "--confirm")
		if code != 0 && (code != exitRefused || !strings.Contains(out, "flip refused")) {
			t.Fatalf("advance --phase flip: exit %d\n%s", code, out)
		}
		return code == 0
	})
	op.until(30*time.Second, "the flip on the timeline, awaiting approval", func() bool {
		return op.js(`(document.querySelector("#timeline li.current") || {dataset: {}}).dataset.step`) == "2" &&
			strings.Contains(op.text("waiting"), "approval of flip")
	})
	op.notReloaded()

	// A viewer sees the same step and no button.
	viewer := newTab(t, op.ctx, shots) // a second tab: its own session storage
	viewerNode := (leader + 1) % 3
	viewer.open(apis[viewerNode], viewerToken)
	viewer.until(30*time.Second, "the viewer's page shows the flip awaiting approval", func() bool {
		return strings.Contains(viewer.text("waiting"), "approval of flip") && strings.Contains(viewer.text("whoami"), "viewer")
	})
	if n := viewer.js(`document.querySelectorAll("#actions *").length`); n != "0" || viewer.js(`document.getElementById("confirm").hidden`) != "true" {
		t.Fatalf("the viewer's page shows %s action elements", n)
	}
	viewer.shot("2-viewer")

	// The operator approves the flip; the proxy acknowledges it.
	op.run(chromedp.Click(chromedp.ID("btn-approve")))
	op.until(90*time.Second, "the flip succeeded, primary B", func() bool {
		w := op.text("waiting")
		return strings.Contains(w, "flip, succeeded") && strings.Contains(w, "Primary B")
	})
	op.until(30*time.Second, "the proxy on epoch 1 with B as primary", func() bool {
		rows := op.js(`[...document.querySelectorAll("#proxies tbody tr")].map(r => [...r.cells].map(c => c.textContent).join("|")).join("\n")`)
		return strings.HasPrefix(rows, "proxy-1|") && strings.Contains(rows, "|B|1|1|") // primary B, epoch 1, one session
	})
	op.until(30*time.Second, "both ensembles with their servers", func() bool {
		e := op.text("ensembles")
		return strings.Contains(e, "Ensemble A") && strings.Contains(e, "Ensemble B") && strings.Contains(e, "leader") &&
			strings.Contains(e, "follower") && strings.Contains(e, "standalone") && strings.Contains(e, "0x")
	})
	op.until(30*time.Second, "the Mesos tasks on A's agents", func() bool {
		rows := op.js(`[...document.querySelectorAll("#tasks tbody tr")].map(r => [...r.cells].map(c => c.textContent).join("|")).join(";")`)
		// The framework churns its tasks: between a kill and the next
		// launch three of the four run.
		return regexp.MustCompile(`(^|;)A\|2\|[34](;|$)`).MatchString(rows) && strings.Contains(rows, "B|0|0")
	})
	op.until(30*time.Second, "the sync panel with lag samples", func() bool {
		return strings.Contains(op.text("sync"), "lag A→B") && op.js("state.lag.length") != "0"
	})
	op.notReloaded()
	op.tokenNotInURLs(opToken)
	op.shot("3-after-flip")

	// The leader dies: the page (served by it) raises the error banner.
	// (Leadership may have moved under load: follow it first, and keep the
	// viewer on a follower.)
	if l := cl.leader(); l != leader {
		leader = l
		op.open(apis[leader], opToken)
		op.until(30*time.Second, "the new leader's page", func() bool { return strings.Contains(op.text("waiting"), "flip, succeeded") })
		if viewerNode == leader {
			viewerNode = (leader + 1) % 3
			viewer.open(apis[viewerNode], viewerToken)
		}
	}
	cl.kill(leader)
	op.until(30*time.Second, "the error banner once the leader is killed", func() bool {
		return op.js(`document.getElementById("banner").hidden`) == "false" && strings.Contains(op.text("banner"), "unreachable")
	})
	if n := op.js(`[...document.querySelectorAll("#actions button")].filter(b => !b.disabled).length`); n != "0" {
		t.Fatalf("%s buttons enabled while the page's control node is down", n)
	}
	op.shot("4-leader-killed")
	// The third node too: the viewer's follower is alone, without a leader;
	// its page says what it shows may lag.
	third := 3 - leader - viewerNode
	cl.kill(third)
	viewer.until(60*time.Second, "the no-leader banner on the follower's page", func() bool {
		return viewer.js(`document.getElementById("banner").hidden`) == "false" &&
			strings.Contains(viewer.text("banner"), "No control-plane leader reachable")
	})
	viewer.shot("4b-no-leader-on-a-follower")
	cl.restart(leader)
	cl.restart(third)
	op.until(60*time.Second, "recovery: the banner gone, a leader named", func() bool {
		return op.js(`document.getElementById("banner").hidden`) == "true" && op.js(`document.getElementById("node").dataset.leader`) != ""
	})
	op.until(30*time.Second, "the state after recovery", func() bool { return strings.Contains(op.text("waiting"), "flip, succeeded") })
	op.notReloaded()
	op.shot("5-recovered")
	viewer.until(30*time.Second, "the viewer's page (on another node) without a banner", func() bool {
		return viewer.js(`document.getElementById("banner").hidden`) == "true" && strings.Contains(viewer.text("waiting"), "flip, succeeded")
	})
}

// startDashboardMesos starts an emulated Mesos cluster (bin/mesos-sim) on
// zkURL: side A's master and two agents and a framework keeping four tasks
// running; side B's master and agent exist only in the returned mesos:
// section of migration.yaml. It waits until the four tasks run.
func startDashboardMesos(t *testing.T, dir, zkURL string) string {
	t.Helper()
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	sim := filepath.Join(dir, "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", sim, "../mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}
	port := func() int { // below the ephemeral range: the processes bind it later
		p, err := zktest.StablePort()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := filepath.Join(dir, "mesos")
	masterArgs := []string{"--agent_ping_timeout=300ms", "--max_agent_ping_timeouts=4", "--zk_session_timeout=4s"}
	agentArgs := []string{"--heartbeat=100ms", "--zk_session_timeout=4s"}
	dep := &deployer.Local{Binary: sim, Dir: run, ZK: zkURL, Quorum: 1, MasterArgs: masterArgs, AgentArgs: agentArgs}
	procs := []deployer.Process{
		{Kind: deployer.Master, Name: "a-m1", Host: "127.0.0.1", Port: port(), Hostname: "127.0.0.1"},
		{Kind: deployer.Agent, Name: "a-ag1", Host: "127.0.0.1", Port: port(), Hostname: "agent-a1"},
		{Kind: deployer.Agent, Name: "a-ag2", Host: "127.0.0.1", Port: port(), Hostname: "agent-a2"},
	}
	bMaster, bAgent := port(), port()
	t.Cleanup(func() {
		for _, p := range procs {
			if pid := dep.PID(p); pid != 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	ctx := context.Background()
	for _, p := range procs {
		if err := dep.Start(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	fwPort := port()
	fwLog, _ := os.Create(filepath.Join(dir, "framework.log"))
	fw := exec.Command(sim, "framework", "--master", zkURL, "--port", strconv.Itoa(fwPort), "--tasks", "4",
		"--churn", "1s", "--zk_session_timeout", "4s", "--history", filepath.Join(dir, "history.jsonl"))
	fw.Stdout, fw.Stderr = fwLog, fwLog
	fw.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := fw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Process.Kill(); _ = fw.Wait(); fwLog.Close() })
	within(t, 60*time.Second, "four tasks running on A's agents", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/state", fwPort))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Active map[string]int `json:"active"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Active["TASK_RUNNING"] >= 4
	})
	return fmt.Sprintf(`mesos:
  zk: %s
  quorum: 1
  timeout_sec: 60
  sides:
    a:
      masters: [{name: a-m1, host: 127.0.0.1, port: %d}]
      agents: [{name: a-ag1, host: 127.0.0.1, port: %d, hostname: agent-a1}, {name: a-ag2, host: 127.0.0.1, port: %d, hostname: agent-a2}]
    b:
      masters: [{name: b-m1, host: 127.0.0.1, port: %d}]
      agents: [{name: b-ag1, host: 127.0.0.1, port: %d, hostname: agent-b1}]
  deployer:
    kind: local
    binary: %s
    dir: %s
    master_args: [%s]
    agent_args: [%s]
`, zkURL, procs[0].Port, procs[1].Port, procs[2].Port, bMaster, bAgent, sim, run,
		strings.Join(masterArgs, ", "), strings.Join(agentArgs, ", "))
}
