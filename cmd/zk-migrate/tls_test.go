package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/raftstore"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// tlsPlane is three control processes with HTTPS (mutual TLS) on the API
// and mutual TLS on Raft.
type tlsPlane struct {
	dir     string
	ca      *tlstest.CA
	caFile  string
	client  tlstest.Issued
	apis    []string // https://host:port
	rafts   []string
	logs    []string
	cmds    []*exec.Cmd
	tlsArgs []string // the CLI's TLS flags
}

func startTLSPlane(t *testing.T, dir, tokens string) *tlsPlane {
	t.Helper()
	ca, err := tlstest.NewCA("zk-migrate test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsPlane{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.pem")}
	if err := ca.WriteCA(p.caFile); err != nil {
		t.Fatal(err)
	}
	if p.client, err = ca.Issue(dir, "alice-cli", "alice"); err != nil {
		t.Fatal(err)
	}
	p.tlsArgs = []string{"--ca-cert", p.caFile, "--client-cert", p.client.Cert, "--client-key", p.client.Key}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("c%d", i)
		node, err := ca.Issue(dir, id, "127.0.0.1", raftstore.DefaultPeerName)
		if err != nil {
			t.Fatal(err)
		}
		api, raftAddr := freeAddr(t), freeAddr(t)
		args := []string{"control", "--id", id, "--raft-addr", raftAddr, "--api-addr", api,
			"--data-dir", filepath.Join(dir, id), "--tokens", tokens, "--raft-stabilization", "500ms",
			"--tls-cert", node.Cert, "--tls-key", node.Key, "--tls-ca", p.caFile, "--tls-client-ca", p.caFile,
			"--raft-tls-cert", node.Cert, "--raft-tls-key", node.Key, "--raft-tls-ca", p.caFile}
		if i == 1 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", p.apis[0])
		}
		logPath := filepath.Join(dir, id+".log")
		logf, _ := os.Create(logPath)
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })
		p.apis, p.rafts, p.logs, p.cmds = append(p.apis, "https://"+api), append(p.rafts, raftAddr), append(p.logs, logPath), append(p.cmds, cmd)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			out, code := p.cli(t, i-1, "node", "list", "--output", "json")
			if code == 0 && strings.Contains(out, `"leader": true`) {
				break
			}
			if time.Now().After(deadline) {
				l, _ := os.ReadFile(logPath)
				t.Fatalf("control node %s never saw a leader over TLS: %s\n%s", id, out, l)
			}
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := p.cli(t, 0, "node", "list", "--output", "json")
		if strings.Count(out, `"voter": true`) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never 3 voters over TLS:\n%s", out)
		}
	}
	return p
}

// cli runs the CLI against node i with the operator token and the TLS flags.
func (p *tlsPlane) cli(t *testing.T, i int, args ...string) (string, int) {
	t.Helper()
	return run(t, append(append(args, "--api", p.apis[i], "--token", opToken), p.tlsArgs...)...)
}

func (p *tlsPlane) logHas(i int, want string) bool {
	b, _ := os.ReadFile(p.logs[i])
	return strings.Contains(string(b), want)
}

// TestControlPlaneOverTLS runs three control processes with HTTPS and
// mutual TLS on the API and on Raft, in front of two TLS-only ensembles,
// and drives a migration through a follower (writes forwarded to the
// leader over TLS): phase 1 syncs the ensembles over TLS and the flip's
// guard compares them over TLS. Plaintext is refused on the API port and the Raft port, each
// with a log line; a CLI without a client certificate or without the CA is
// refused; a certificate replaced on disk is served to new connections
// without a restart; the audit trail verifies over HTTPS.
func TestControlPlaneOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and three control nodes")
	}
	ctx := context.Background()
	dir := t.TempDir()
	// Both ensembles serve TLS only (secureClientPort, client certificates
	// required): the control node's replicator, pre-flight and flip guard
	// reach them with migration.yaml's sync.tls.
	zm, err := zktest.MakeTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ens []*zktest.Ensemble
	for _, name := range []string{"tls-cp-a", "tls-cp-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name, TLS: zm.Server})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		ens = append(ens, e)
	}
	za, err := zkclient.Dial(ctx, ens[0].Addrs(), zkclient.Options{TLS: zm.Client.ClientConfig})
	if err != nil {
		t.Fatal(err)
	}
	defer za.Close()
	for _, path := range []string{"/mesos", "/mesos/json.info_0000000001"} {
		if _, err := za.Create(ctx, path, []byte("m"), zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	p := startTLSPlane(t, dir, writeTokens(t, dir))
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`migration: {id: sec, source_zk: %q, target_zk: %q, paths: [/mesos]}
sync: {tls: {ca: %q, cert: %q, key: %q}}
`, ens[0].ConnectString(), ens[1].ConnectString(), zm.CA, zm.ClientCert, zm.ClientKey)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Through a follower (node 3): forwarded to the leader over TLS.
	if out, code := p.cli(t, 2, "start", "--config", cfg); code != 0 {
		t.Fatalf("start over TLS: exit %d\n%s", code, out)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, _ := p.cli(t, 2, "status")
		if strings.Contains(out, "1-deploy-b-and-sync") && strings.Contains(out, "succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("phase 1 never succeeded over TLS:\n%s", out)
		}
	}
	zb, err := zkclient.Dial(ctx, ens[1].Addrs(), zkclient.Options{TLS: zm.Client.ClientConfig})
	if err != nil {
		t.Fatal(err)
	}
	defer zb.Close()
	if _, _, err := zb.Get(ctx, "/mesos/json.info_0000000001"); err != nil {
		t.Fatalf("phase 1 succeeded but B lacks A's node: %v", err)
	}
	// The leader's live view (sync over TLS, heartbeats, digests), over HTTPS.
	if out, code := p.cli(t, 2, "validate", "--phase", "current"); code != 0 || !strings.Contains(out, "healthy") || strings.Contains(out, "NOT") {
		t.Fatalf("validate --phase current over HTTPS: exit %d\n%s", code, out)
	}
	// The flip's guard compares digests over TLS too.
	if out, code := p.cli(t, 0, "advance", "--phase", "flip", "--confirm"); code != 0 {
		t.Fatalf("advance to the flip over TLS: exit %d\n%s", code, out)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, _ := p.cli(t, 0, "status", "--output", "json")
		var rows []map[string]any
		_ = json.Unmarshal([]byte(out), &rows)
		if len(rows) == 1 && rows[0]["step_name"] == "flip" && rows[0]["status"] == "succeeded" && rows[0]["primary"] == "B" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flip never succeeded over TLS:\n%s", out)
		}
	}
	// Every node computed the same chain: the same head once caught up.
	head := func(i int) string {
		out, code := p.cli(t, i, "audit", "verify")
		if code != 0 || !strings.Contains(out, "verified") {
			t.Fatalf("audit verify over HTTPS on node %d: exit %d\n%s", i+1, code, out)
		}
		_, h, _ := strings.Cut(out, "head   ")
		return strings.TrimSpace(h)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		h0, h1, h2 := head(0), head(1), head(2)
		if h0 != "" && h0 == h1 && h1 == h2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nodes' audit heads differ: %s %s %s", h0, h1, h2)
		}
	}

	// Plaintext HTTP to the HTTPS port: refused (400), and logged.
	plainURL := "http://" + strings.TrimPrefix(p.apis[0], "https://")
	if out, code := run(t, "status", "--api", plainURL, "--token", opToken); code == 0 {
		t.Fatalf("plaintext HTTP to the HTTPS API answered:\n%s", out)
	}
	waitFor(t, func() bool { return p.logHas(0, "refused a plaintext HTTP request on the HTTPS-only API port") })
	// No client certificate (mutual TLS), and no CA (the server is not trusted).
	if out, code := run(t, "status", "--api", p.apis[0], "--token", opToken, "--ca-cert", p.caFile); code == 0 {
		t.Fatalf("no client certificate accepted:\n%s", out)
	}
	if out, code := run(t, "status", "--api", p.apis[0], "--token", opToken); code == 0 || !strings.Contains(out, "certificate") {
		t.Fatalf("an API certificate from an unknown CA trusted: exit %d\n%s", code, out)
	}
	// Plaintext on the Raft port: refused, and logged.
	c, err := net.Dial("tcp", p.rafts[1])
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("\x00not tls at all"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	c.Close()
	waitFor(t, func() bool { return p.logHas(1, "refused a plaintext connection on the TLS-only Raft port") })

	// Rotate node 1's certificate on disk: new connections get the new one,
	// the process keeps running.
	served := func() string {
		f, err := tlsconf.Load(tlsconf.Paths{Cert: p.client.Cert, Key: p.client.Key, CA: p.caFile})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", strings.TrimPrefix(p.apis[0], "https://"), f.ClientConfig("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	if _, err := p.ca.Issue(dir, "c1", "127.0.0.1", raftstore.DefaultPeerName); err != nil {
		t.Fatal(err)
	}
	want, _ := tlstest.Serial(filepath.Join(dir, "c1.pem"))
	if before == want.String() {
		t.Fatal("the reissued certificate has the old serial")
	}
	waitFor(t, func() bool { return served() == want.String() })
	if p.cmds[0].ProcessState != nil {
		t.Fatal("node 1 restarted")
	}
	if !p.logHas(0, "certificate files changed on disk: reloaded") {
		t.Fatal("the reload was not logged")
	}
	// The cluster still works after the rotation (Raft uses the same files).
	if out, code := p.cli(t, 0, "pause", "--migration", "sec"); code != 0 {
		t.Fatalf("pause after rotation: exit %d\n%s", code, out)
	}
}
