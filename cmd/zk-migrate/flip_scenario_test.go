package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/history"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// Session timeouts of the flip scenario: the masters' as Mesos' own
// --zk_session_timeout (10 s, its default), the application clients alike. The
// proxies' pause budget is a third of the shortest.
const (
	masterTimeout = 10 * time.Second
	clientTimeout = 10 * time.Second
	flipReaders   = 20
	flipWriters   = 6
)

// flipScenario is the world of issue 11's acceptance test: two ensembles,
// one control node with gossip, three two-ensemble proxy processes, three
// emulated Mesos masters (C client) each behind its own proxy, and the
// test's load.
type flipScenario struct {
	t      *testing.T
	a, b   *zktest.Ensemble
	za, zb *zk.Conn
	dir    string
	api    string   // the control node the CLI talks to
	apis   []string // every control node's API URL
	ctl    []*exec.Cmd
	gossip []string // the control nodes' gossip addresses
	opts   flipOptions
	// killed names the proxies killed on purpose: their clients may see a
	// lost connection (never an expiry).
	killed map[string]bool
	// observer is a member of the gossip pool reading what the proxies
	// advertise (role replicator: the barrier ignores it).
	observer *membership.Agent
	cfg      string
	proxies  []*flipProxy
	masters  []*simMaster
	sim      string
	regs     []string
	rec      *history.Recorder
	writers  []*regWriter
	readers  []*leaderReader
	sampler  *leaderSampler
	stopLoad chan struct{}
	loadDone chan struct{}
}

// flipProxy is one `zk-migrate proxy` process in two-ensemble mode taking
// part in flips (admin endpoint, token, gossip, state dir).
type flipProxy struct {
	name, listen, admin, metrics string
	args                         []string
	cmd                          *exec.Cmd
	logs                         *syncBuffer
}

// simMaster is one `mesos-sim master` process.
type simMaster struct {
	name string
	port int
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	code int
}

func (m *simMaster) url() string { return fmt.Sprintf("http://127.0.0.1:%d", m.port) }

func (m *simMaster) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// flipOptions vary the scenario.
type flipOptions struct {
	// controls is the number of control nodes (1 or 3).
	controls int
	// readerProxies: the readers use the first this many proxies (the
	// others may be killed: a reader does not reconnect).
	readerProxies int
}

func newFlipScenario(t *testing.T, name string, opts flipOptions) *flipScenario {
	t.Helper()
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles, a control node, three proxies and three Mesos masters")
	}
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		t.Fatalf("libzookeeper-mt-dev is missing (run make deps): %v", err)
	}
	s := &flipScenario{t: t, dir: t.TempDir(), rec: history.NewRecorder(), opts: opts}
	ctx := context.Background()
	var err error
	if s.a, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: name + "-a"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.a.Close)
	if s.b, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: name + "-b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.b.Close)
	for _, z := range []struct {
		e    *zktest.Ensemble
		conn **zk.Conn
	}{{s.a, &s.za}, {s.b, &s.zb}} {
		if *z.conn, _, err = zk.Connect(z.e.Addrs(), 10*time.Second, zk.WithLogger(quiet{})); err != nil {
			t.Fatal(err)
		}
		t.Cleanup((*z.conn).Close)
	}
	for _, p := range []string{"/mesos", "/reg", "/reg/acks"} {
		if _, err := s.za.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 4; i++ {
		p := fmt.Sprintf("/reg/r%d", i)
		if _, err := s.za.Create(p, []byte("init"), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		s.regs = append(s.regs, p)
	}
	s.sim = filepath.Join(s.dir, "mesos-sim")
	if out, err := exec.Command("go", "build", "-o", s.sim, "../mesos-sim").CombinedOutput(); err != nil {
		t.Fatalf("building mesos-sim: %v\n%s", err, out)
	}

	// The control node, in the gossip pool, with the proxies' token.
	tokens := writeTokens(t, s.dir)
	ptok := filepath.Join(s.dir, "proxy.token")
	if err := os.WriteFile(ptok, []byte("flip-scenario-proxy-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= opts.controls; i++ {
		g := freeAddr(t)
		args := []string{"--gossip-addr", g, "--gossip-insecure", "--proxy-token-file", ptok}
		join := ""
		if i > 1 {
			join = s.apis[0]
			args = append(args, "--gossip-join", s.gossip[0])
		}
		api, cmd := controlNode(t, s.dir, tokens, fmt.Sprintf("c%d", i), join, args...)
		s.apis, s.ctl, s.gossip = append(s.apis, api), append(s.ctl, cmd), append(s.gossip, g)
	}
	if opts.controls > 1 {
		waitVoters(t, s.apis[0], opts.controls)
	}
	s.api = s.apis[len(s.apis)-1]
	t.Cleanup(func() {
		if t.Failed() {
			for i := range s.apis {
				l, _ := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("c%d.log", i+1)))
				t.Logf("---- control node c%d (last lines):\n%s", i+1, lastLines(string(l), 25))
			}
		}
	})
	for _, g := range s.gossip {
		within(t, 30*time.Second, "the control nodes' gossip ports listening", func() bool {
			c, err := net.DialTimeout("tcp", g, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	// The replicator and the flip guard cover /mesos only: the guard
	// compares digests of every migration path, before the barrier and
	// again after the proxies swapped, and under the registers' steady
	// writes those never match at one instant, so the flip is aborted
	// after the swap (observed: A→B→A, two pauses). The proxies mirror
	// /reg all the same, and validate compares it at the end.
	obs, err := membership.Join(membership.Config{Name: "observer", BindAddr: freeAddr(t), Seeds: s.gossip, Fast: true,
		Meta: membership.Meta{Role: membership.RoleReplicator}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = obs.Leave() })
	s.observer = obs
	s.cfg = filepath.Join(s.dir, "migration.yaml")
	if err := os.WriteFile(s.cfg, []byte(fmt.Sprintf(`
migration:
  id: flip
  source_zk: "%s"
  target_zk: "%s"
  paths: [/mesos]
  health_check_interval_sec: 1
sync:
  lag_threshold_ms: 2000
`, s.a.ConnectString(), s.b.ConnectString())), 0o644); err != nil {
		t.Fatal(err)
	}

	for i := 1; i <= 3; i++ {
		p := &flipProxy{name: fmt.Sprintf("proxy-%d", i), listen: freeAddr(t), admin: freeAddr(t), metrics: freeAddr(t)}
		p.args = []string{"proxy", "--listen", p.listen, "--source", s.a.ConnectString(), "--target", s.b.ConnectString(),
			"--admin-addr", p.admin, "--admin-token-file", ptok, "--metrics-addr", p.metrics, "--name", p.name,
			"--gossip-addr", freeAddr(t), "--gossip-insecure",
			"--state-dir", filepath.Join(s.dir, p.name)}
		for _, g := range s.gossip {
			p.args = append(p.args, "--gossip-join", g)
		}
		s.proxies = append(s.proxies, p)
		s.startProxy(p)
	}
	s.must("start", "--config", s.cfg)
	s.waitStep("1-deploy-b-and-sync", "succeeded", "A")

	// Three masters, each behind its own proxy; the first leads.
	for i, p := range s.proxies {
		port, err := zktest.StablePort()
		if err != nil {
			t.Fatal(err)
		}
		s.masters = append(s.masters, s.startMaster(fmt.Sprintf("master%d", i+1), port, p.listen))
		// Started one after the other so the first to register leads.
		within(t, 30*time.Second, "master registered", func() bool {
			kids, _, _ := s.za.Children("/mesos")
			n := 0
			for _, k := range kids {
				if strings.HasPrefix(k, "json.info_") {
					n++
				}
			}
			return n == i+1
		})
	}
	return s
}

func (s *flipScenario) startProxy(p *flipProxy) {
	t := s.t
	p.logs = &syncBuffer{}
	p.cmd = exec.Command(bin, p.args...)
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd, logs := p.cmd, p.logs
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			var warn []string
			for _, l := range strings.Split(logs.String(), "\n") {
				if !strings.Contains(l, `"level":"INFO"`) {
					warn = append(warn, l)
				}
			}
			t.Logf("---- %s log, warnings (last lines):\n%s", p.name, lastLines(strings.Join(warn, "\n"), 40))
		}
	})
	within(t, 30*time.Second, p.name+" answers ruok", func() bool {
		out, err := zktest.FourLetterWord(p.listen, "ruok", time.Second)
		return err == nil && out == "imok"
	})
}

func (s *flipScenario) startMaster(name string, port int, proxyAddr string) *simMaster {
	t := s.t
	m := &simMaster{name: name, port: port, log: &syncBuffer{}, done: make(chan struct{})}
	m.cmd = exec.Command(s.sim, "master", "--zk", "zk://"+proxyAddr+"/mesos", "--quorum", "2", "--hostname", name,
		"--port", fmt.Sprint(port), "--zk_session_timeout", masterTimeout.String(),
		"--registry_fetch_timeout", "30s", "--registry_store_timeout", "20s")
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := m.cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			m.code = ee.ExitCode()
		}
		close(m.done)
	}()
	t.Cleanup(func() {
		_ = m.cmd.Process.Kill()
		<-m.done
		if t.Failed() {
			t.Logf("---- %s output (last lines):\n%s", m.name, lastLines(m.log.String(), 15))
		}
	})
	return m
}

// must runs the CLI against the control node.
func (s *flipScenario) must(args ...string) string {
	s.t.Helper()
	out, code := run2(s.t, s.api, args...)
	if code != 0 {
		s.t.Fatalf("%v: exit %d\n%s", args, code, out)
	}
	return out
}

// waitStep waits until the migration is at step with status and primary.
func (s *flipScenario) waitStep(step, status, primary string) {
	s.t.Helper()
	var last map[string]any
	defer func() {
		if s.t.Failed() {
			s.t.Logf("last status: %v", last)
		}
	}()
	within(s.t, 60*time.Second, fmt.Sprintf("migration at %s %s, primary %s", step, status, primary), func() bool {
		out, code := runStdout(s.t, "status", "--migration", "flip", "--output", "json", "--api", s.api, "--token", opToken)
		var rows []map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 1 {
			return false
		}
		last = rows[0]
		return last["step_name"] == step && last["status"] == status && last["primary"] == primary
	})
	s.t.Logf("migration at %s %s, primary %s, epoch %v", step, status, primary, last["epoch"])
	epoch, _ := last["epoch"].(float64)
	s.proxiesFollow(int64(epoch), primary)
}

// proxiesFollow checks that every proxy advertises the epoch and primary
// the control plane recorded (gossip): a proxy left behind serves the old
// primary while the others serve the new one. The wait is generous: it
// ends as soon as every proxy is seen there, and once a proxy that had
// flipped (its log said so) was still seen at the old epoch 5 s after the
// flip was recorded done, its metadata update queued behind the killed
// control leader's suspicion on a loaded machine.
func (s *flipScenario) proxiesFollow(epoch int64, primary string) {
	s.t.Helper()
	if eventually(20*time.Second, func() bool { return len(s.proxiesNotAt(epoch, primary)) == 0 }) {
		return
	}
	behind := s.proxiesNotAt(epoch, primary)
	s.t.Errorf("at epoch %d primary %s, proxies left behind: %v", epoch, primary, behind)
}

// flip moves the primary to B (`advance --phase flip`), retrying while the
// guard refuses (exit 4: the sync has not yet seen a heartbeat, a digest
// read under writes differs), as an operator would.
func (s *flipScenario) flip() { s.flipWith(nil) }

// flipWith is flip with fault run as soon as the flip is accepted.
func (s *flipScenario) flipWith(fault func()) {
	s.t.Helper()
	start, at := time.Now(), s.rec.Since()
	within(s.t, 60*time.Second, "the flip accepted", func() bool {
		out, code := run2(s.t, s.api, "advance", "--phase", "flip", "--confirm")
		if code != 0 && (code != exitRefused || !strings.Contains(out, "flip refused")) {
			s.t.Fatalf("advance --phase flip: exit %d\n%s", code, out)
		}
		if code != 0 {
			s.t.Logf("flip refused, retrying: %s", lastLines(out, 1))
			time.Sleep(500 * time.Millisecond)
		}
		return code == 0
	})
	if fault != nil {
		fault()
	}
	s.waitStep("flip", "succeeded", "B")
	s.t.Logf("flip A→B took %v (history clock %d to %d)", time.Since(start).Round(time.Millisecond), at, s.rec.Since())
}

// rollback moves the primary back to A (`rollback --to-phase 1`).
func (s *flipScenario) rollback() { s.rollbackWith(nil) }

// rollbackWith is rollback with fault run as soon as it is accepted.
func (s *flipScenario) rollbackWith(fault func()) {
	s.t.Helper()
	start, at := time.Now(), s.rec.Since()
	s.must("rollback", "--to-phase", "1", "--confirm")
	if fault != nil {
		fault()
	}
	s.waitStep("1-deploy-b-and-sync", "succeeded", "A")
	s.t.Logf("rollback B→A took %v (history clock %d to %d)", time.Since(start).Round(time.Millisecond), at, s.rec.Since())
}

// startLoad starts the readers, writers and the leader sampler.
func (s *flipScenario) startLoad() {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range s.regs {
		data, st, err := s.za.Get(r)
		if err != nil {
			t.Fatal(err)
		}
		s.rec.Init(r, true, st.Version, string(data))
	}
	s.stopLoad, s.loadDone = make(chan struct{}), make(chan struct{})
	var running []func()
	for i := 0; i < flipReaders; i++ {
		r, err := dialReader(ctx, i, s.proxies[i%s.opts.readerProxies].listen, clientTimeout)
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		t.Cleanup(r.close)
		s.readers = append(s.readers, r)
		running = append(running, func() { r.run(s.stopLoad) })
	}
	for i := 0; i < flipWriters; i++ {
		p := s.proxies[i%3]
		conn, ev, err := zk.Connect([]string{p.listen}, clientTimeout, zk.WithLogger(quiet{}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		w := &regWriter{id: i, conn: conn, events: ev, via: p.name, regs: s.regs, rec: s.rec}
		s.writers = append(s.writers, w)
		running = append(running, func() { w.run(s.stopLoad) })
	}
	s.sampler = &leaderSampler{alive: func(i int) bool { return !s.masters[i].exited() }}
	for _, m := range s.masters {
		s.sampler.urls = append(s.sampler.urls, m.url())
	}
	running = append(running, func() { s.sampler.run(s.stopLoad) })
	go func() {
		defer close(s.loadDone)
		done := make(chan struct{}, len(running))
		for _, f := range running {
			go func() { f(); done <- struct{}{} }()
		}
		for range running {
			<-done
		}
	}()
	t.Cleanup(s.stopLoadNow)
}

// stopLoadNow stops the load and waits for every client to return.
func (s *flipScenario) stopLoadNow() {
	select {
	case <-s.stopLoad:
	default:
		close(s.stopLoad)
	}
	<-s.loadDone
}

// leaderIndex waits until exactly one live master leads and returns it.
func (s *flipScenario) leaderIndex() int {
	s.t.Helper()
	leader := -1
	within(s.t, 30*time.Second, "exactly one leading master", func() bool {
		var lead []int
		for i, m := range s.masters {
			if m.exited() {
				continue
			}
			if resp, err := noRedirect.Get(m.url() + "/master/state"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					lead = append(lead, i)
				}
			}
		}
		if len(lead) == 1 {
			leader = lead[0]
		}
		return len(lead) == 1
	})
	return leader
}

// proxiesNotAt lists the proxies whose advertised epoch or primary is not
// the given one.
func (s *flipScenario) proxiesNotAt(epoch int64, primary string) []string {
	seen := map[string]membership.Meta{}
	for _, m := range s.observer.Members() {
		seen[m.Name] = m.Meta
	}
	var out []string
	for _, p := range s.proxies {
		if m, ok := seen[p.name]; !ok || m.Epoch != epoch || string(m.Primary) != primary {
			out = append(out, fmt.Sprintf("%s (epoch %d, primary %q, in pool %v)", p.name, m.Epoch, m.Primary, ok))
		}
	}
	return out
}

// proxyOf names the proxy master m reaches ZooKeeper through.
func (s *flipScenario) proxyOf(m *simMaster) string {
	for i, mm := range s.masters {
		if mm == m {
			return s.proxies[i].name
		}
	}
	return ""
}

// killControlLeader SIGKILLs the control node that leads; the CLI then
// talks to a survivor.
func (s *flipScenario) killControlLeader() {
	s.t.Helper()
	for i, api := range s.apis {
		if s.ctl[i].ProcessState != nil {
			continue
		}
		resp, err := http.Get(api + "/healthz")
		if err != nil {
			continue
		}
		var h struct {
			IsLeader bool `json:"is_leader"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if h.IsLeader {
			_ = s.ctl[i].Process.Kill()
			_, _ = s.ctl[i].Process.Wait()
			s.api = s.apis[(i+1)%len(s.apis)]
			s.t.Logf("control leader c%d SIGKILLed", i+1)
			return
		}
	}
	s.t.Fatal("no control leader to kill")
}

// restartProxy SIGKILLs proxy p and starts it again with the same flags
// (its --state-dir) where its clients expect it.
func (s *flipScenario) restartProxy(p *flipProxy, down time.Duration) {
	s.t.Helper()
	if s.killed == nil {
		s.killed = map[string]bool{}
	}
	s.killed[p.name] = true
	for _, w := range s.writers {
		if w.via == p.name {
			w.tolerateLoss.Store(true)
		}
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	s.t.Logf("%s SIGKILLed", p.name)
	time.Sleep(down)
	s.startProxy(p)
	s.t.Logf("%s restarted", p.name)
}

// logFlips logs each proxy's flips as the proxies report them, and the
// control nodes' barrier retries (a proxy that answered but could not
// hold, a guard out of time).
func (s *flipScenario) logFlips() {
	for i := range s.apis {
		l, _ := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("c%d.log", i+1)))
		for _, line := range strings.Split(string(l), "\n") {
			if strings.Contains(line, "flip barrier:") {
				s.t.Logf("control node c%d: %s", i+1, line)
			}
		}
	}
	for _, p := range s.proxies {
		for _, line := range strings.Split(p.logs.String(), "\n") {
			if strings.Contains(line, `"msg":"flip`) && strings.Contains(line, `"level":"WARN"`) {
				s.t.Logf("%s: %s", p.name, line)
			}
			if strings.Contains(line, "the control plane recorded another primary") {
				s.t.Logf("%s started on the recorded primary: %s", p.name, line)
			}
			if !strings.Contains(line, `"msg":"flip done"`) {
				continue
			}
			var raw map[string]any
			if json.Unmarshal([]byte(line), &raw) != nil {
				continue
			}
			at, _ := raw["time"].(string)
			ms := func(k string) time.Duration {
				v, _ := raw[k].(float64)
				return time.Duration(v).Round(time.Millisecond)
			}
			s.t.Logf("%s: flip to %v at epoch %v done %s: %v sessions, %v failed, pause %v (drained after %v, versions read after %v)",
				p.name, raw["primary"], raw["epoch"], at, raw["sessions"], raw["failed"], ms("pause"), ms("drained_after"), ms("versions_read_after"))
		}
	}
}

// TestFlipScenarioWithMesos is issue 11's acceptance scenario: Mesos
// masters on the real C client, readers holding watches on the leader and
// writers doing versioned writes on shared znodes, all through three
// proxy processes, while the control node flips A→B (advance --phase
// flip), B→A (rollback --to-phase 1) and A→B again. No session expires, no
// client sees an error, exactly one master leads at every sample and the
// same one throughout, every acknowledged write is on both ensembles,
// digests are equal, and the register history is linearizable (porcupine)
// across all three flips. Then the leading master is SIGKILLed: its
// json.info_ goes from B (the ephemeral belongs to the session serving
// there) within the session timeout plus the proxy's expiry margin, the
// next master leads, and every reader's data, child and persistent watch
// fires exactly once for it.
//
// On a loaded two-core machine a proxy's hold sometimes runs out before
// the control plane raises the fence; the hold markers (SPEC 4.10) make
// that a longer pause, never an error. A proxy whose drain does not
// finish within its pause budget answers the hold 503: the control plane
// holds every proxy again rather than raising the fence without it (it
// once did, and a writer through that proxy got ConnectionLoss). Every
// proxy must follow every flip: one left behind fails the test.
func TestFlipScenarioWithMesos(t *testing.T) {
	s := newFlipScenario(t, "fs", flipOptions{controls: 1, readerProxies: 3})
	leader := s.leaderIndex()
	if leader != 0 {
		t.Fatalf("master%d leads; the first registered (master1) should", leader+1)
	}
	s.startLoad()
	settle := func() { time.Sleep(3 * time.Second) }
	settle()
	s.flip()
	settle()
	s.rollback()
	settle()
	s.flip()
	settle()
	s.stopLoadNow()
	s.checkAfterFlips(leader)
	s.killLeaderOnB(leader)
}

// checkAfterFlips asserts what the flips must have left intact.
func (s *flipScenario) checkAfterFlips(leader int) {
	t := s.t
	for _, m := range s.masters {
		if m.exited() {
			t.Fatalf("%s exited during the flips (code %d):\n%s", m.name, m.code, lastLines(m.log.String(), 10))
		}
		out := m.log.String()
		killed := s.killed[s.proxyOf(m)]
		// Behind a killed proxy a master sees its connection go, never
		// its session (the proxy resumes it on the primary it finds).
		if strings.Contains(out, "xpired") || !killed && strings.Contains(out, "disconnected from ZooKeeper") {
			t.Errorf("%s noticed the flips:\n%s", m.name, lastLines(out, 10))
		}
	}
	leaders, bad := s.sampler.result()
	t.Logf("leader samples: %d, by leader %v", s.sampler.samples.Load(), leaders)
	if len(bad) > 0 {
		t.Errorf("leadership samples broke the one-leader rule (%d), first: %v", len(bad), bad[:min(5, len(bad))])
	}
	if len(leaders) != 1 || leaders[leader] == 0 {
		t.Errorf("leaders seen across the flips: %v; want master%d alone", leaders, leader+1)
	}
	if l := s.leaderIndex(); l != leader {
		t.Errorf("master%d leads after the flips; master%d led before", l+1, leader+1)
	}
	for _, w := range s.writers {
		if len(w.noticed) > 0 {
			t.Errorf("a writer saw errors: %v", w.noticed)
		}
	}
	recontended := false
	for _, m := range s.masters {
		recontended = recontended || strings.Contains(m.log.String(), "Contend again")
	}
	for _, r := range s.readers {
		c, noticed, _ := r.snapshot()
		if len(noticed) > 0 {
			t.Errorf("%v", noticed)
		}
		if c != (watchCount{}) && recontended {
			t.Logf("reader %d saw a master contend again: %+v", r.id, c)
		} else if c != (watchCount{}) {
			t.Errorf("reader %d got watch events while nothing changed under /mesos: %+v %v", r.id, c, r.events)
		}
	}
	// Every proxy took part: it advertises the last epoch, primary B.
	var m map[string]any
	out, _ := runStdout(t, "status", "--migration", "flip", "--output", "json", "--api", s.api, "--token", opToken)
	var rows []map[string]any
	if json.Unmarshal([]byte(out), &rows) == nil && len(rows) == 1 {
		m = rows[0]
	}
	epoch, _ := m["epoch"].(float64)
	if !eventually(10*time.Second, func() bool { return len(s.proxiesNotAt(int64(epoch), "B")) == 0 }) {
		t.Errorf("proxies not at epoch %v primary B after the flips: %v", epoch, s.proxiesNotAt(int64(epoch), "B"))
	}
	for _, p := range s.proxies {
		if v := proxyMetric(t, p.metrics, "zkmigrate_proxy_sessions_expired_total"); v != 0 {
			t.Errorf("%s expired %v sessions", p.name, v)
		}
	}

	// Every acknowledged unique create is on both ensembles.
	acked := 0
	for _, w := range s.writers {
		for _, p := range w.acked {
			acked++
			if !exists(s.za, p) || !exists(s.zb, p) {
				t.Errorf("acknowledged create %s: on A %v, on B %v", p, exists(s.za, p), exists(s.zb, p))
			}
		}
	}
	// Digests equal (the CLI's validate), then the final state of each
	// register read on the primary (B) closes the history.
	within(t, 30*time.Second, "validate finds A and B equal", func() bool {
		_, code := run(t, "validate", "--source", s.a.ConnectString(), "--target", s.b.ConnectString(), "--paths", "/mesos,/reg")
		return code == 0
	})
	for _, r := range s.regs {
		_, _ = s.zb.Sync(r)
		data, st, err := s.zb.Get(r)
		switch {
		case err == zk.ErrNoNode:
			s.rec.Final(r, false, 0, "")
		case err != nil:
			t.Fatal(err)
		default:
			s.rec.Final(r, true, st.Version, string(data))
		}
	}
	t.Logf("history: %v; %d unique creates acknowledged", s.rec.Stats(), acked)
	vis := filepath.Join(os.TempDir(), fmt.Sprintf("zkm-flip-history-%d.html", time.Now().UnixNano()))
	res, err := s.rec.Check(2*time.Minute, vis)
	if err != nil {
		t.Fatal(err)
	}
	s.logFlips()
	if res != porcupine.Ok {
		dump := strings.TrimSuffix(vis, ".html") + ".jsonl"
		if f, err := os.Create(dump); err == nil {
			_ = s.rec.WriteJSON(f)
			f.Close()
		}
		t.Errorf("the register history across the flips is %s for porcupine (not linearizable); see %s and %s", res, vis, dump)
	}
}

// killLeaderOnB SIGKILLs the leading master after the final flip: its
// json.info_ must go from B, the primary, and the next master lead.
func (s *flipScenario) killLeaderOnB(leader int) {
	t := s.t
	kids, _, err := s.zb.Children("/mesos")
	if err != nil {
		t.Fatal(err)
	}
	node := "/mesos/" + lowestInfo(kids)
	data, _, err := s.zb.Get(node)
	if err != nil || !strings.Contains(string(data), s.masters[leader].name) {
		t.Fatalf("the lowest json.info_ on B (%s) is not the leader's: %s %v", node, data, err)
	}
	// The readers keep watching through the failover; what they saw
	// before it is the baseline.
	base := map[int]watchCount{}
	for _, r := range s.readers {
		base[r.id], _, _ = r.snapshot()
	}
	stop := make(chan struct{})
	readersDone := make(chan struct{}, len(s.readers))
	for _, r := range s.readers {
		go func() { r.run(stop); readersDone <- struct{}{} }()
	}
	defer func() {
		close(stop)
		for range s.readers {
			<-readersDone
		}
	}()
	killed := time.Now()
	_ = s.masters[leader].cmd.Process.Kill()
	<-s.masters[leader].done
	within(t, 3*masterTimeout, node+" gone from B", func() bool {
		ok, _, err := s.zb.Exists(node)
		return err == nil && !ok
	})
	gone := time.Since(killed)
	t.Logf("the SIGKILLed leader's %s left B after %v (session timeout %v)", node, gone.Round(time.Millisecond), masterTimeout)
	// The proxy expires a silent client's session after its timeout plus
	// timeout/10 + 1 s (SPEC 4.3); ZooKeeper then removes the ephemeral.
	if limit := masterTimeout + masterTimeout/10 + 2*time.Second; gone > limit {
		t.Errorf("%s left B after %v; want within %v", node, gone, limit)
	}
	next := s.leaderIndex()
	if next == leader {
		t.Fatalf("the killed master still leads")
	}
	kids, _, _ = s.zb.Children("/mesos")
	lowest := "/mesos/" + lowestInfo(kids)
	if data, _, err := s.zb.Get(lowest); err != nil || !strings.Contains(string(data), s.masters[next].name) {
		t.Errorf("%s leads but the lowest json.info_ on B (%s) holds %s", s.masters[next].name, lowest, data)
	}
	within(t, 3*masterTimeout, "every reader's watches fired", func() bool {
		for _, r := range s.readers {
			c, _, _ := r.snapshot()
			if b := base[r.id]; c.deleted-b.deleted < 1 || c.children-b.children < 1 || c.persistent-b.persistent < 1 {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // a doubled event would have arrived by now
	for _, r := range s.readers {
		c, noticed, _ := r.snapshot()
		if len(noticed) > 0 {
			t.Errorf("%v", noticed)
		}
		b := base[r.id]
		if c = (watchCount{c.deleted - b.deleted, c.children - b.children, c.persistent - b.persistent}); c != (watchCount{deleted: 1, children: 1, persistent: 1}) {
			t.Errorf("reader %d: watches fired %+v for the leader's exit; want each exactly once (%v)", r.id, c, r.events)
		}
	}
}

var noRedirect = &http.Client{Timeout: 2 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// proxyMetric reads one unlabelled counter or gauge from a proxy's /metrics.
func proxyMetric(t *testing.T, addr, name string) float64 {
	t.Helper()
	p := &dualProxy{metrics: addr}
	return p.metric(t, name)
}

// TestFlipScenarioUnderFaults is the scenario with three control nodes and
// a fault in each flip: one ZooKeeper server of each ensemble SIGKILLed as
// the first flip (A→B) begins; a proxy (master3's) SIGKILLed as the
// rollback (B→A) begins and restarted with its --state-dir 300 ms later;
// the control leader SIGKILLed inside the second flip's barrier (once the
// epoch is begun). The readers use the two proxies that stay up; the
// killed proxy's clients may see a lost connection, nobody an expiry.
// The same assertions as TestFlipScenarioWithMesos follow.
//
// It runs in every go test (and in make chaos): 45 to 74 s with the race
// detector on the loaded 2-core machine. Fixed while it was gated (SPEC
// 4.10, "Under faults"): the new control leader's guard aborted the flip (a replicator
// just started, reconnecting or not started yet gives no verdict now);
// writes through the killed proxy, or in flight on a killed server, never
// reached the new primary (recorded before they are sent, repaired after
// the restart, mirrored when their reply is lost: SPEC 4.9); proxy-3,
// restarted inside the rollback's barrier, was not held by it, so its
// clients wrote B while the others were held (the barrier announces
// itself now, and a proxy that finds the announcement holds itself:
// "A proxy the barrier did not hold"); a delete committed through proxy-3
// as it died, never mirrored, was undone on the new primary (the
// barrier's swap copies what no live proxy mirrored: "A write no live
// proxy mirrors"); proxy-3, caught up with the rollback by its fence (a
// one-shot flip with its own version reading, no agreed peer answering
// yet), numbered a register created since the raise one below its peers
// (v6 twice: Illegal; a late flip keeps no offset for such a znode now:
// SPEC 4.10, "Versions"). Seen once since, not fixed: the observer saw a
// proxy's new epoch in gossip more than 5 s after the flip was done (it
// had swapped; SetMeta waits for gossip). The restarted proxy's clients keep their sessions (a
// record names the ensemble each session lives on:
// proxy/session_resume.go).
func TestFlipScenarioUnderFaults(t *testing.T) {
	s := newFlipScenario(t, "ff", flipOptions{controls: 3, readerProxies: 2})
	leader := s.leaderIndex()
	if leader != 0 {
		t.Fatalf("master%d leads; the first registered (master1) should", leader+1)
	}
	s.startLoad()
	for _, w := range s.writers {
		// A write in flight when its ZooKeeper server dies has an unknown
		// outcome: the proxy closes the client's connection (ConnectionLoss),
		// as ZooKeeper does. An expiry is never expected.
		w.tolerateLoss.Store(true)
	}
	settle := func() { time.Sleep(3 * time.Second) }
	settle()
	s.flipWith(func() {
		for _, e := range []*zktest.Ensemble{s.a, s.b} {
			if err := e.Kill(3); err != nil {
				t.Fatal(err)
			}
		}
		t.Log("server 3 of A and of B SIGKILLed")
	})
	for _, e := range []*zktest.Ensemble{s.a, s.b} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := e.Restart(ctx, 3); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	settle()
	s.rollbackWith(func() {
		s.restartProxy(s.proxies[2], 300*time.Millisecond)
	})
	settle()
	s.flipWith(func() {
		within(t, 30*time.Second, "the second flip's epoch begun", func() bool {
			out, code := runStdout(t, "status", "--migration", "flip", "--output", "json", "--api", s.api, "--token", opToken)
			var rows []map[string]any
			return code == 0 && json.Unmarshal([]byte(out), &rows) == nil && len(rows) == 1 && rows[0]["epoch"] == float64(3)
		})
		s.killControlLeader()
	})
	settle()
	s.stopLoadNow()
	s.checkAfterFlips(leader)
	s.killLeaderOnB(leader)
}
