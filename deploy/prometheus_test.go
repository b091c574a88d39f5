package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// prom is a real Prometheus server started by a test.
type prom struct {
	addr string
	logs *syncBuffer
}

// forClause matches a rule's hold time.
var forClause = regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)

// startPrometheus runs the prometheus binary on a loopback port with a
// temporary data directory, scraping every second the proxies, the sync
// and the control node under the job names of prometheus/prometheus.yml and evaluating the
// shipped rule files every second. Each rule's "for" is cut to hold so the
// test does not wait minutes; rules_test.yml checks the shipped holds.
func startPrometheus(t *testing.T, bin string, hold time.Duration, proxies []string, syncer, control string) *prom {
	t.Helper()
	dir := t.TempDir()
	var rules []string
	for _, f := range ruleFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		short := forClause.ReplaceAllString(string(b), "${1}"+hold.String())
		rules = append(rules, tempFile(t, dir, filepath.Base(f), short))
	}
	quoted := func(ss []string) string { return `['` + strings.Join(ss, `', '`) + `']` }
	cfg := tempFile(t, dir, "prometheus.yml", fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: %s
scrape_configs:
  - job_name: zk-migrate-proxy
    static_configs: [{targets: %s}]
  - job_name: zk-migrate-sync
    static_configs: [{targets: %s}]
  - job_name: zk-migrate-control
    static_configs: [{targets: %s}]
`, quoted(rules), quoted(proxies), quoted([]string{syncer}), quoted([]string{control})))
	p := &prom{addr: freeAddr(t), logs: &syncBuffer{}}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", p.logs.String())
		}
	})
	waitFor(t, 20*time.Second, "prometheus ready", func() bool {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// api GETs /api/v1/<path> and decodes its data into v; a Prometheus error
// (a query that does not parse) is returned.
func (p *prom) api(path string, v any) error {
	resp, err := http.Get("http://" + p.addr + "/api/v1/" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", path, r.Error)
	}
	return json.Unmarshal(r.Data, v)
}

// sample is one series of an instant vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query; Grafana's $__rate_interval becomes 10s
// (ten scrapes here).
func (p *prom) query(expr string) ([]sample, error) {
	expr = strings.ReplaceAll(expr, "$__rate_interval", "10s")
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.api("query?query="+url.QueryEscape(expr), &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", d.ResultType)
	}
	var out []sample
	return out, json.Unmarshal(d.Result, &out)
}

// alert is one entry of /api/v1/alerts.
type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *prom) alerts() ([]alert, error) {
	var d struct {
		Alerts []alert `json:"alerts"`
	}
	return d.Alerts, p.api("alerts", &d)
}

// firing lists the instances for which alert name fires.
func (p *prom) firing(t *testing.T, name string) []string {
	t.Helper()
	return p.firingLabel(t, name, "instance")
}

// firingLabel lists label's value in each firing alert name, sorted.
func (p *prom) firingLabel(t *testing.T, name, label string) []string {
	t.Helper()
	as, err := p.alerts()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		if a.Labels["alertname"] == name && a.State == "firing" {
			out = append(out, a.Labels[label])
		}
	}
	sort.Strings(out)
	return out
}

// ruleHealth returns every rule's evaluation health, "ok" once evaluated
// without error, by rule name.
func (p *prom) ruleHealth() (map[string]string, error) {
	var d struct {
		Groups []struct {
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := p.api("rules", &d); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, g := range d.Groups {
		for _, r := range g.Rules {
			out[r.Name] = r.Health + " " + r.LastError
		}
	}
	return out, nil
}
