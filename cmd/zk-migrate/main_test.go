package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// These tests run the built binary as an operator would.

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "zkm-cli-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "zk-migrate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

// runStdout runs the binary and returns its standard output alone (what a
// script parses: warnings go to standard error) and its exit code.
func runStdout(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		out.Write(errOut.Bytes())
	}
	return out.String(), code
}

// TestBadConfigurationIsAUsageErrorWithAHint checks every rejected flag
// exits 2 and says what would be valid.
func TestBadConfigurationIsAUsageErrorWithAHint(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--upstream", "zk1"}, "missing port"},
		{[]string{"proxy", "--upstream", " , "}, "--upstream is empty"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--log-level", "chatty"}, "want debug, info, warn or error"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--jute-maxbuffer", "10"}, "at least 1024"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--max-pending", "0"}, "must be at least 1"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--four-letter-words", "ruok,dunp"}, "not a four-letter word"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--source", "zk1:2181", "--target", "zk2:2181"}, "are exclusive"},
		{[]string{"proxy", "--source", "zk1:2181"}, "needs both --source and --target"},
		{[]string{"proxy", "--source", "zk1:2181", "--target", "zk2:2181", "--primary", "B2"}, "want source or target"},
		{[]string{"proxy", "--source", "zk1:2181", "--target", "zk1:2181"}, "two different ensembles"},
		{[]string{"proxy", "--source", "zk1:2181", "--target", "zk2"}, "--target \"zk2\": missing port"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--primary", "target"}, "--primary needs --source and --target"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--state-dir", "/tmp/x"}, "it needs --source and --target"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--secure-listen", "127.0.0.1:0"}, "--secure-listen needs --client-tls-cert"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--zk-tls-cert", "c.pem", "--zk-tls-key", "k.pem"}, "--zk-tls-cert needs --zk-tls-ca"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--admin-tls-cert", "c.pem"}, "--admin-tls-cert and --admin-tls-key go together"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--listen", ""}, "no client port"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--zk-tls-ca", "/nonexistent/ca.pem"}, "TLS to ZooKeeper"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--mirror-auth-file", "/tmp/x"}, "--mirror-auth-file is for two-ensemble mode"},
		{[]string{"proxy", "--upstream", "zk1:2181", "--zk-tls-ensembles", "target"}, "--zk-tls-ensembles needs --zk-tls-ca"},
		{[]string{"sandbox", "--duration", "1s"}, "at least 5s"},
	} {
		out, code := run(t, c.args...)
		if code != exitUsage || !strings.Contains(out, c.want) {
			t.Errorf("%v: exit %d, output %q; want exit %d mentioning %q", c.args, code, out, exitUsage, c.want)
		}
	}
	if out, code := run(t, "proxy"); code != exitUsage || !strings.Contains(out, "--upstream HOSTS, or --source HOSTS and --target HOSTS") {
		t.Errorf("proxy without --upstream: exit %d, %q", code, out)
	}
}

func TestHelpReadsLikeARunbook(t *testing.T) {
	out, code := run(t, "proxy", "--help")
	if code != 0 || !strings.Contains(out, "--zk=zk://127.0.0.1:2181/mesos") || !strings.Contains(out, "echo ruok") {
		t.Fatalf("proxy --help (exit %d):\n%s", code, out)
	}
}

// TestProxyBinaryServesClientsAndMetrics runs `zk-migrate proxy` against a
// real standalone server and scrapes its /metrics endpoint.
func TestProxyBinaryServesClientsAndMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ens, err := zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "cli"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	listen, metrics, gossip := freeAddr(t), freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "proxy", "--listen", listen, "--upstream", ens.ConnectString(), "--metrics-addr", metrics,
		"--gossip-addr", gossip, "--gossip-insecure", "--name", "proxy-test", "--four-letter-words", "ruok,srvr,dump", "--max-connections-per-ip", "50")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitFor(t, func() bool {
		out, err := zktest.FourLetterWord(listen, "ruok", time.Second)
		return err == nil && out == "imok"
	})

	// The allowlist flag is applied: dump is allowed here, cons is not.
	if out, err := zktest.FourLetterWord(listen, "cons", 5*time.Second); err != nil || !strings.Contains(out, "not in the whitelist") {
		t.Errorf("cons with --four-letter-words ruok,srvr,dump: %q, %v", out, err)
	}
	if out, err := zktest.FourLetterWord(listen, "dump", 5*time.Second); err != nil || out == "" || strings.Contains(out, "whitelist") {
		t.Errorf("dump allowed by --four-letter-words: %q, %v", out, err)
	}

	c, _, err := zk.Connect([]string{listen}, 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create("/cli", []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Get("/missing"); err != zk.ErrNoNode {
		t.Fatal(err)
	}
	// The proxy is in the gossip pool with its session count.
	ctl, err := membership.Join(membership.Config{Name: "control-test", BindAddr: freeAddr(t), Seeds: []string{gossip},
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	waitFor(t, func() bool {
		for _, m := range ctl.Members() {
			if m.Name == "proxy-test" && m.Meta.Role == membership.RoleProxy && m.Meta.Sessions == 1 && m.Meta.Primary == "A" {
				return true
			}
		}
		return false
	})
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`zkmigrate_proxy_requests_total{op="create"} 1`,
		`zkmigrate_proxy_request_errors_total{code="NONODE",op="getData"} 1`,
		`zkmigrate_proxy_request_duration_seconds_bucket{op="create"`,
		`zkmigrate_proxy_sessions 1`,
		`zkmigrate_proxy_client_connections 1`,
		`zkmigrate_proxy_upstream_reconnects_total{result="ok"} 0`,
		`zkmigrate_proxy_client_received_bytes_total`,
		`zkmigrate_proxy_four_letter_words_refused_total{word="cons"} 1`,
		`zkmigrate_proxy_client_connections_refused_total{reason="max_connections_per_ip"} 0`,
		`zkmigrate_proxy_sessions_expired_total 0`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// SIGTERM: a clean exit.
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("proxy exit: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not stop on SIGINT")
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if f() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("condition not met in 10s")
}

// TestSyncOnceAndValidate copies a subtree between two real servers with
// the CLI, then shows validate catching a difference.
func TestSyncOnceAndValidate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "cli")
	ca, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	for _, p := range []string{"/mesos", "/mesos/log_replicas", "/mesos/log_replicas/0000000001", "/marathon", "/marathon/state"} {
		if _, err := ca.Create(p, []byte("v:"+p), 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/mesos,/marathon"}
	out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", ""}, common...)...)
	if code != 0 || !strings.Contains(out, "/mesos: equal (3 znodes") || !strings.Contains(out, "/marathon: equal (2 znodes") {
		t.Fatalf("sync --once: exit %d\n%s", code, out)
	}
	if out, code := run(t, append([]string{"validate"}, common...)...); code != 0 || !strings.Contains(out, "equal") {
		t.Fatalf("validate after sync: exit %d\n%s", code, out)
	}
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if _, err := cb.Set("/marathon/state", []byte("diverged"), -1); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, append([]string{"validate"}, common...)...)
	if code != exitDifferent || !strings.Contains(out, "/marathon: DIFFERENT") || !strings.Contains(out, "/marathon/state: data differs") {
		t.Fatalf("validate after divergence: exit %d\n%s", code, out)
	}
	if out, code := run(t, "validate", "--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "mesos"); code != exitUsage || !strings.Contains(out, "absolute znode paths") {
		t.Fatalf("relative path: exit %d\n%s", code, out)
	}
}

// startPair starts two standalone ZooKeeper servers, A and B, stopped when
// the test ends.
func startPair(t *testing.T, ctx context.Context, name string) (a, b *zktest.Ensemble) {
	t.Helper()
	var err error
	if a, err = zktest.Start(ctx, zktest.Config{Servers: 1, Name: name + "-a"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	if b, err = zktest.Start(ctx, zktest.Config{Servers: 1, Name: name + "-b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return a, b
}
