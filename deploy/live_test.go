package deploy

import (
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
// ensembles A and B, two `zk-migrate proxy` processes on A, `zk-migrate
// sync` in continuous mode between A and B, and Prometheus scraping them
// with the shipped rules. The control plane (`zk-migrate control`) exports
// no Prometheus metrics, so no panel or rule reads it and it is not started.
//
// It checks that every metric a dashboard panel or a rule names is exported
// by the process its job scrapes (after traffic, so labelled series exist),
// that Prometheus runs every panel's query and evaluates every rule without
// error, that A losing its quorum fires ZkMigrateEnsembleUnavailable (seen
// by the proxies: ZooKeeper exports no metrics of its own here), and that
// killing a proxy or the sync fires ZkMigrateProxyDown for that proxy only,
// and ZkMigrateSyncDown.
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

	var proxies []*process
	var listens []string
	for range 2 {
		listen, metrics := freeAddr(t), freeAddr(t)
		proxies = append(proxies, start(t, bin, metrics, "proxy", "--listen", listen, "--upstream", a.ConnectString(),
			"--metrics-addr", metrics, "--log-level", "warn"))
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

	byJob := map[string]*process{"zk-migrate-proxy": proxies[0], "zk-migrate-sync": syncer}
	if jobs := exampleJobs(t); !slices.Equal(jobs, []string{"zk-migrate-proxy", "zk-migrate-sync"}) {
		t.Fatalf("prometheus/prometheus.yml scrapes jobs %v; this test (and startPrometheus) scrape zk-migrate-proxy and zk-migrate-sync", jobs)
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

	p := startPrometheus(t, prometheus, 2*time.Second, []string{proxies[0].metrics, proxies[1].metrics}, syncer.metrics)
	waitFor(t, 20*time.Second, "every target scraped 4 times", func() bool {
		s, err := p.query(`count(count_over_time(up[10s]) >= 4)`)
		return err == nil && len(s) == 1 && s[0].Value[1] == "3"
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

	t.Run("quorum loss fires ZkMigrateEnsembleUnavailable", func(t *testing.T) {
		if f := p.firing(t, "ZkMigrateEnsembleUnavailable"); len(f) > 0 {
			t.Fatalf("ZkMigrateEnsembleUnavailable firing for %v while A serves", f)
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
	})

	t.Run("killing a proxy or the sync fires ZkMigrateProxyDown or ZkMigrateSyncDown for it", func(t *testing.T) {
		for _, name := range []string{"ZkMigrateProxyDown", "ZkMigrateSyncDown"} {
			if f := p.firing(t, name); len(f) > 0 {
				t.Fatalf("%s firing for %v while every process runs", name, f)
			}
		}
		for _, proc := range []*process{proxies[0], syncer} {
			if err := proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 20*time.Second, "ZkMigrateProxyDown and ZkMigrateSyncDown firing", func() bool {
			return len(p.firing(t, "ZkMigrateProxyDown")) > 0 && len(p.firing(t, "ZkMigrateSyncDown")) > 0
		})
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
