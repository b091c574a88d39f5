package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"gopkg.in/yaml.v3"
)

// query is one PromQL expression shipped in deploy/: a dashboard target or
// an alert rule.
type query struct {
	where string // file and panel or alert, for messages
	expr  string
}

// dashboardQueries reads every target of every panel of the dashboards in
// grafana/, as an operator imports them.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	files, err := filepath.Glob("grafana/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in grafana/ (%v): run make dashboards", err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []panel `json:"panels"` // collapsed rows
	}
	var out []query
	var walk func(file string, ps []panel)
	walk = func(file string, ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, query{where: file + ": panel " + p.Title, expr: tg.Expr})
			}
			walk(file, p.Panels)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []panel `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		walk(f, d.Panels)
	}
	return out
}

// ruleFiles are the alert rule files an operator loads.
func ruleFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("prometheus/*.rules.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files in prometheus/ (%v)", err)
	}
	return files
}

// ruleQueries reads the expression of every alerting and recording rule.
func ruleQueries(t *testing.T) []query {
	t.Helper()
	var out []query
	for _, f := range ruleFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rf struct {
			Groups []struct {
				Rules []struct {
					Alert  string `yaml:"alert"`
					Record string `yaml:"record"`
					Expr   string `yaml:"expr"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(b, &rf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				out = append(out, query{where: f + ": rule " + r.Alert + r.Record, expr: r.Expr})
			}
		}
	}
	return out
}

// promBinary finds a Prometheus tool, or skips the test when it is missing
// outside CI; CI installs it (scripts/deps.sh), so there it must exist.
func promBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found: install Debian's prometheus package (make deps, or apt-get install prometheus)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// TestPromtool validates the rules and the example configuration with
// promtool, and runs the rules' unit tests (prometheus/rules_test.yml).
func TestPromtool(t *testing.T) {
	promtool := promBinary(t, "promtool")
	for _, args := range [][]string{
		append([]string{"check", "rules"}, ruleFiles(t)...),
		{"check", "config", "prometheus/prometheus.yml"},
		{"test", "rules", "prometheus/rules_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// TestEveryAlertHasAUnitTest keeps rules_test.yml in step with the rules:
// a new alert without a promtool test fails here.
func TestEveryAlertHasAUnitTest(t *testing.T) {
	b, err := os.ReadFile("prometheus/rules_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range ruleQueries(t) {
		name := regexp.MustCompile(`rule (\w+)$`).FindStringSubmatch(q.where)[1]
		if !regexp.MustCompile(`alertname: ` + name + `\n`).Match(b) {
			t.Errorf("%s: no test in prometheus/rules_test.yml", q.where)
		}
	}
}

// exampleJobs are the scrape job names of prometheus/prometheus.yml, which
// the rules and dashboards select with job="...".
func exampleJobs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("prometheus/prometheus.yml: %v", err)
	}
	var jobs []string
	for _, sc := range cfg.ScrapeConfigs {
		jobs = append(jobs, sc.JobName)
	}
	return jobs
}
