package deploy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
)

// controlNode is a `zk-migrate control` process started by a test.
type controlNode struct {
	*process
	api, token, gossip string
}

// startControl runs one control node (bootstrapped alone) with its
// /metrics on a free port and a gossip pool of its own that proxies can
// join.
func startControl(t *testing.T, bin string) *controlNode {
	t.Helper()
	dir := t.TempDir()
	const token = "deploy-test-operator-token"
	tokens := tempFile(t, dir, "tokens", token+" operator deploy-test\n")
	api, metrics, gossip := freeAddr(t), freeAddr(t), freeAddr(t)
	p := start(t, bin, metrics, "control", "--id", "c1", "--raft-addr", freeAddr(t), "--api-addr", api,
		"--data-dir", filepath.Join(dir, "raft"), "--tokens", tokens, "--bootstrap",
		"--metrics-addr", metrics, "--gossip-addr", gossip, "--gossip-insecure")
	return &controlNode{process: p, api: "http://" + api, token: token, gossip: gossip}
}

// call sends an operator request to the control node's API and fails the
// test unless it answers want.
func (c *controlNode) call(t *testing.T, method, path, body string, want int) {
	t.Helper()
	req, err := http.NewRequest(method, c.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
	}
}

// startMigration creates migration m1 from A to B under /mesos, with
// manual approval and a health check every second, and starts it: it
// waits in phase 1 for an approval (no sync on the control node: the
// standalone `zk-migrate sync` owns /mesos here), while the leader's
// health checks watch A and B.
func (c *controlNode) startMigration(t *testing.T, a, b string) {
	t.Helper()
	c.call(t, http.MethodPost, "/api/v1/migrations", fmt.Sprintf(`migration:
  id: m1
  source_zk: %s
  target_zk: %s
  paths: [/mesos]
  require_manual_approval: true
  health_check_interval_sec: 1
`, a, b), http.StatusCreated)
	c.call(t, http.MethodPost, "/api/v1/migrations/m1/start", "", http.StatusOK)
}

// mesosMasters registers n contending Mesos masters under /mesos on c
// (ephemeral sequential json.info_ nodes, as Mesos does) and returns
// their paths, the leader (lowest sequence) first.
func mesosMasters(t *testing.T, c *zk.Conn, n int) []string {
	t.Helper()
	var out []string
	for range n {
		p, err := c.Create("/mesos/json.info_", []byte(`{"hostname":"master"}`), zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// burst sends concurrent reads through one session to proxy p (started
// with --max-pending 2) until it has stopped reading that client once
// (backpressure_waits_total{side="client",reason="max_pending"}). The
// session's timeout is short: a stalled session currently resumes only
// at the client's next ping (a third of the timeout).
func burst(t *testing.T, p *process, addr string) {
	t.Helper()
	c := connect(t, []string{addr}, 2*time.Second)
	defer c.Close()
	waitFor(t, 20*time.Second, "the proxy stopping to read a client at --max-pending", func() bool {
		var wg sync.WaitGroup
		for range 5 {
			wg.Add(1)
			go func() { defer wg.Done(); _, _, _ = c.Exists("/mesos") }()
		}
		wg.Wait()
		f, err := p.scrape()
		return err == nil && f["zkmigrate_proxy_backpressure_waits_total"] != ""
	})
}

// connectionFlood opens n connections to a proxy started with a small
// --max-connections-per-ip, until the proxy has refused enough of them to
// drop log lines (client_connections_refused_total and
// log_lines_dropped_total{reason="max_connections_per_ip"}), then closes
// them all.
func connectionFlood(t *testing.T, p *process, addr string, n int) {
	t.Helper()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, 10*time.Second, "the proxy dropping refusal log lines", func() bool {
		f, err := p.scrape()
		return err == nil && f["zkmigrate_proxy_log_lines_dropped_total"] != ""
	})
}

// value returns the sample of an unlabelled series in c's scrape ("" if
// absent).
func (c *controlNode) value(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + c.metrics + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}
