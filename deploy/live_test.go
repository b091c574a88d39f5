package deploy

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// jobMatcher finds the scrape job a query is restricted to.
var jobMatcher = regexp.MustCompile(`job="([^"]+)"`)

// scrapeGenerated are series Prometheus adds to every target itself.
var scrapeGenerated = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true,
	"scrape_samples_post_metric_relabeling": true, "scrape_series_added": true}

// TestDashboardsAndRulesAgainstLiveProcesses runs what an operator runs:
// ensembles A and B, a `zk-migrate control` node with a migration from A
// to B waiting in phase 1 for approval (its health checks watch A, B and
// the Mesos masters contending on A), two `zk-migrate proxy` processes on A
// in its gossip pool, `zk-migrate sync` in continuous mode between A and B,
// and Prometheus scraping them with the shipped rules.
//
// It checks that every metric a dashboard panel or a rule names is exported
// by the process its job scrapes (after traffic, a burst past --max-pending
// and a connection flood past --max-connections-per-ip, so labelled series
// exist), that Prometheus runs every panel's query and evaluates every rule
// without error, that the Mesos leader failing over during phase 1 fires
// ZkMigrateMesosLeaderChanged, that A losing its quorum fires
// ZkMigrateEnsembleUnavailable (seen by the proxies) and
// ZkMigrateEnsembleQuorumLost for side A only (seen by the control node),
// and that killing a proxy, the sync or the control node fires
// ZkMigrateProxyDown for that proxy only, ZkMigrateSyncDown and
// ZkMigrateControlNodeDown.
func TestDashboardsAndRulesAgainstLiveProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper, zk-migrate and Prometheus")
	}
	prometheus := promBinary(t, "prometheus")
	bin := buildBinary(t)
	a, b := startPair(t)
	ca, cb := connect(t, a.Addrs(), 10*time.Second), connect(t, b.Addrs(), 10*time.Second)
	if _, err := ca.Create("/mesos", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	masters := mesosMasters(t, ca, 2)
	control := startControl(t, bin)
	control.startMigration(t, a.ConnectString(), b.ConnectString())

	var proxies []*process
	var listens []string
	for i := range 2 {
		listen, metrics := freeAddr(t), freeAddr(t)
		args := []string{"proxy", "--listen", listen, "--upstream", a.ConnectString(), "--metrics-addr", metrics, "--log-level", "warn",
			"--gossip-addr", freeAddr(t), "--gossip-insecure", "--gossip-join", control.gossip, "--name", fmt.Sprintf("proxy-%d", i)}
		if i == 0 { // limits low enough for the test to reach them
			args = append(args, "--max-pending", "2", "--max-connections-per-ip", "8")
		}
		proxies = append(proxies, start(t, bin, metrics, args...))
		listens = append(listens, listen)
	}
	syncMetrics := freeAddr(t)
	syncer := start(t, bin, syncMetrics, "sync", "--source", a.ConnectString(), "--target", b.ConnectString(),
		"--paths", "/mesos", "--metrics-addr", syncMetrics)
	stopTraffic := traffic(t, "/mesos", listens...)
	defer stopTraffic()
	for _, l := range listens {
		badFrame(t, l)
		if _, err := zktest.FourLetterWord(l, "ruok", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	makeConflict(t, syncer, ca, cb)
	burst(t, proxies[0], listens[0])
	connectionFlood(t, proxies[0], listens[0], 30)
	waitFor(t, 20*time.Second, "the control node seeing both proxies and the Mesos leader", func() bool {
		f, err := control.scrape()
		return err == nil && f["zkmigrate_control_mesos_leader_sequence"] != "" && f["zkmigrate_control_ensemble_quorum"] != "" &&
			control.value(t, "zkmigrate_control_proxies_live") == "2"
	})

	byJob := map[string]*process{"zk-migrate-proxy": proxies[0], "zk-migrate-sync": syncer, "zk-migrate-control": control.process}
	if jobs := exampleJobs(t); !slices.Equal(jobs, []string{"zk-migrate-proxy", "zk-migrate-sync", "zk-migrate-control"}) {
		t.Fatalf("prometheus/prometheus.yml scrapes jobs %v; this test (and startPrometheus) scrape zk-migrate-proxy, zk-migrate-sync and zk-migrate-control", jobs)
	}
	queries := append(dashboardQueries(t), ruleQueries(t)...)
	t.Run("every metric named is exported", func(t *testing.T) {
		var missing []string
		waitUntil(15*time.Second, func() bool {
			all := map[string]string{}
			fams := map[string]map[string]string{}
			for job, p := range byJob {
				f, err := p.scrape()
				if err != nil {
					t.Fatal(err)
				}
				fams[job] = f
				for k, v := range f {
					all[k] = v
				}
			}
			missing = nil
			for _, q := range queries {
				want := all
				if m := jobMatcher.FindStringSubmatch(q.expr); m != nil {
					if want = fams[m[1]]; want == nil {
						missing = append(missing, q.where+": job "+m[1]+" is not a scrape job of prometheus/prometheus.yml")
						continue
					}
				}
				for _, name := range metricNames(q.expr) {
					if !scrapeGenerated[name] && !exported(name, want) {
						missing = append(missing, q.where+": "+name+" is not exported")
					}
				}
			}
			return len(missing) == 0
		})
		for _, m := range missing {
			t.Error(m)
		}
	})

	t.Run("README lists every exported metric", func(t *testing.T) {
		readme, err := os.ReadFile("../README.md")
		if err != nil {
			t.Fatal(err)
		}
		documented := map[string]bool{}
		for _, m := range regexp.MustCompile(`zkmigrate_[a-z0-9_]+`).FindAllString(string(readme), -1) {
			if !strings.HasSuffix(m, "_") { // zkmigrate_replicator_* names a family of metrics
				documented[m] = true
			}
		}
		known := map[string]bool{}
		for _, proc := range byJob {
			f, err := proc.scrape()
			if err != nil {
				t.Fatal(err)
			}
			for name := range f {
				if strings.HasPrefix(name, "zkmigrate_") {
					known[name] = true
				}
			}
		}
		decl := declared()
		for name := range decl {
			known[name] = true // with labelled families that have no series yet
		}
		for name := range known {
			if !documented[name] {
				t.Errorf("%s is exported but README.md does not list it (add it to a metrics table)", name)
			}
		}
		for name := range documented {
			if !known[name] {
				t.Errorf("README.md lists %s, which no binary exports", name)
			}
		}
	})

	p := startPrometheus(t, prometheus, 2*time.Second, []string{proxies[0].metrics, proxies[1].metrics}, syncer.metrics, control.metrics)
	waitFor(t, 20*time.Second, "every target scraped 4 times", func() bool {
		s, err := p.query(`count(count_over_time(up[10s]) >= 4)`)
		return err == nil && len(s) == 1 && s[0].Value[1] == "4"
	})

	t.Run("Prometheus runs every panel's query", func(t *testing.T) {
		var empty []string
		for _, q := range dashboardQueries(t) {
			s, err := p.query(q.expr)
			if err != nil {
				t.Errorf("%s: %s: %v", q.where, q.expr, err)
			} else if len(s) == 0 {
				empty = append(empty, q.where+": "+q.expr)
			}
		}
		if len(empty) > 0 {
			t.Errorf("queries without data while the sandbox runs:\n%s", strings.Join(empty, "\n"))
		}
	})

	t.Run("Prometheus evaluates every rule", func(t *testing.T) {
		var health map[string]string
		waitUntil(10*time.Second, func() bool {
			var err error
			if health, err = p.ruleHealth(); err != nil {
				t.Fatal(err)
			}
			for _, h := range health {
				if h != "ok " {
					return false
				}
			}
			return len(health) == len(ruleQueries(t))
		})
		for name, h := range health {
			if h != "ok " {
				t.Errorf("rule %s: health %s", name, h)
			}
		}
		if len(health) != len(ruleQueries(t)) {
			t.Errorf("Prometheus loaded %d rules, the files hold %d", len(health), len(ruleQueries(t)))
		}
	})

	t.Run("the Mesos leader failing over in phase 1 fires ZkMigrateMesosLeaderChanged", func(t *testing.T) {
		if f := p.firingLabel(t, "ZkMigrateMesosLeaderChanged", "path"); len(f) > 0 {
			t.Fatalf("ZkMigrateMesosLeaderChanged firing for %v before any change", f)
		}
		if err := ca.Delete(masters[0], -1); err != nil { // the leading master's session ends
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "ZkMigrateMesosLeaderChanged firing", func() bool {
			return slices.Equal(p.firingLabel(t, "ZkMigrateMesosLeaderChanged", "path"), []string{"/mesos"})
		})
	})

	t.Run("quorum loss fires ZkMigrateEnsembleUnavailable and ZkMigrateEnsembleQuorumLost", func(t *testing.T) {
		if f := p.firing(t, "ZkMigrateEnsembleUnavailable"); len(f) > 0 {
			t.Fatalf("ZkMigrateEnsembleUnavailable firing for %v while A serves", f)
		}
		if f := p.firingLabel(t, "ZkMigrateEnsembleQuorumLost", "side"); len(f) > 0 {
			t.Fatalf("ZkMigrateEnsembleQuorumLost firing for %v while A and B serve", f)
		}
		for _, id := range []int{1, 2} {
			if err := a.Kill(id); err != nil {
				t.Fatal(err)
			}
		}
		// The clients give up on their sessions after 2 s; the proxies
		// then find no server that accepts them.
		waitFor(t, 20*time.Second, "ZkMigrateEnsembleUnavailable firing", func() bool {
			return len(p.firing(t, "ZkMigrateEnsembleUnavailable")) > 0
		})
		waitFor(t, 20*time.Second, "ZkMigrateEnsembleQuorumLost firing for A", func() bool {
			return slices.Equal(p.firingLabel(t, "ZkMigrateEnsembleQuorumLost", "side"), []string{"A"})
		})
	})

	t.Run("killing a proxy, the sync or the control node fires ZkMigrateProxyDown, ZkMigrateSyncDown or ZkMigrateControlNodeDown for it", func(t *testing.T) {
		for _, name := range []string{"ZkMigrateProxyDown", "ZkMigrateSyncDown", "ZkMigrateControlNodeDown"} {
			if f := p.firing(t, name); len(f) > 0 {
				t.Fatalf("%s firing for %v while every process runs", name, f)
			}
		}
		for _, proc := range []*process{proxies[0], syncer, control.process} {
			if err := proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 20*time.Second, "ZkMigrateProxyDown, ZkMigrateSyncDown and ZkMigrateControlNodeDown firing", func() bool {
			return len(p.firing(t, "ZkMigrateProxyDown")) > 0 && len(p.firing(t, "ZkMigrateSyncDown")) > 0 &&
				len(p.firing(t, "ZkMigrateControlNodeDown")) > 0
		})
		if f := p.firing(t, "ZkMigrateControlNodeDown"); !slices.Equal(f, []string{control.metrics}) {
			t.Errorf("ZkMigrateControlNodeDown fires for %v, want %s", f, control.metrics)
		}
		if f := p.firing(t, "ZkMigrateProxyDown"); !slices.Equal(f, []string{proxies[0].metrics}) {
			t.Errorf("ZkMigrateProxyDown fires for %v, want only the killed proxy %s", f, proxies[0].metrics)
		}
		if f := p.firing(t, "ZkMigrateSyncDown"); !slices.Equal(f, []string{syncer.metrics}) {
			t.Errorf("ZkMigrateSyncDown fires for %v, want %s", f, syncer.metrics)
		}
	})
}

// makeConflict changes the same znode on A and on B while the sync is
// stopped (SIGSTOP), so that it finds a conflict when it resumes and the
// conflict counter has a series. It retries a few times: the two writes
// must both land before the sync reads either.
func makeConflict(t *testing.T, syncer *process, a, b *zk.Conn) {
	t.Helper()
	const p = "/mesos/conflict"
	if _, err := a.Create(p, []byte("base"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, p+" copied to B", func() bool { ok, _, _ := b.Exists(p); return ok })
	for i := 0; i < 5; i++ {
		if err := syncer.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		_, errA := a.Set(p, []byte("written on A"), -1)
		_, errB := b.Set(p, []byte("written on B"), -1)
		if err := syncer.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if errA != nil || errB != nil {
			t.Fatalf("set %s: A %v, B %v", p, errA, errB)
		}
		if waitUntil(3*time.Second, func() bool {
			f, err := syncer.scrape()
			return err == nil && f["zkmigrate_replicator_conflicts_total"] != ""
		}) {
			return
		}
	}
	t.Fatal("the sync found no conflict after five concurrent writes on A and B")
}

// waitUntil polls f every 100 ms for up to d and reports whether it held.
func waitUntil(d time.Duration, f func() bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		if f() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
