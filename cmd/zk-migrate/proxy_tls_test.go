package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// javaKeystores makes a JKS key store holding cert and key, and a JKS
// trust store holding ca, with keytool (openssl packs the PEM pair into
// PKCS#12 first, which keytool imports), as an operator of Java clients
// does. The store password is "changeit".
func javaKeystores(t *testing.T, dir, cert, key, ca string) (keyStore, trustStore string) {
	t.Helper()
	for _, tool := range []string{"keytool", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (install default-jre-headless / openssl): %v", tool, err)
		}
	}
	p12 := filepath.Join(dir, "client.p12")
	keyStore, trustStore = filepath.Join(dir, "client.jks"), filepath.Join(dir, "trust.jks")
	for _, c := range [][]string{
		{"openssl", "pkcs12", "-export", "-in", cert, "-inkey", key, "-out", p12, "-passout", "pass:changeit", "-name", "client"},
		{"keytool", "-importkeystore", "-noprompt", "-srckeystore", p12, "-srcstoretype", "PKCS12", "-srcstorepass", "changeit",
			"-destkeystore", keyStore, "-deststoretype", "JKS", "-deststorepass", "changeit"},
		{"keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", ca, "-keystore", trustStore, "-storetype", "JKS", "-storepass", "changeit"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return keyStore, trustStore
}

// javaSecureCLI runs one command of ZooKeeper's Java CLI
// (org.apache.zookeeper.ZooKeeperMain, what zkCli.sh runs) against server
// with the Netty socket and TLS on (zookeeper.client.secure).
func javaSecureCLI(t *testing.T, server, keyStore, trustStore string, cmd ...string) (string, error) {
	t.Helper()
	args := []string{"-Xmx128m", "-XX:TieredStopAtLevel=1", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
		"-Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty",
		"-Dzookeeper.client.secure=true",
		"-Dzookeeper.ssl.keyStore.location=" + keyStore, "-Dzookeeper.ssl.keyStore.password=changeit", "-Dzookeeper.ssl.keyStore.type=JKS",
		"-Dzookeeper.ssl.trustStore.location=" + trustStore, "-Dzookeeper.ssl.trustStore.password=changeit", "-Dzookeeper.ssl.trustStore.type=JKS",
		"-cp", zktest.DefaultClassPath + ":" + zktest.NettyClassPath + ":/usr/share/java/netty-resolver.jar",
		"org.apache.zookeeper.ZooKeeperMain", "-server", server, "-waitforconnection", "-timeout", "30000"}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "java", append(args, cmd...)...).CombinedOutput()
	return string(out), err
}

// TestProxyOverTLSEverywhere runs `zk-migrate proxy` with TLS on every hop
// it owns: a TLS-only client port with mutual TLS (no plaintext port),
// TLS with a client certificate to two TLS-only ensembles, and an HTTPS
// admin endpoint with mutual TLS. ZooKeeper's Java CLI (Netty socket,
// zookeeper.client.secure, key stores made with keytool) writes through
// it and the writes reach both ensembles; a plaintext ZooKeeper client and
// a plaintext HTTP request are refused and logged; the control plane's
// Fleet flips the proxy over HTTPS, found at the https:// URL the proxy
// advertises in gossip, and the Java CLI then writes to B mirrored to A.
func TestProxyOverTLSEverywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper and Java clients")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	m, err := zktest.MakeTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ens []*zktest.Ensemble
	for _, name := range []string{"ptls-a", "ptls-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name, TLS: m.Server})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		ens = append(ens, e)
	}
	// The proxies' own CA: client port and admin endpoint certificates,
	// the applications' and the control plane's client certificates.
	ca, err := tlstest.NewCA("proxy CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "proxy-ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue(dir, "proxy", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	app, err := ca.Issue(dir, "app", "app")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := ca.Issue(dir, "control", "control")
	if err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "flip.token")
	if err := os.WriteFile(token, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seedAgent, err := membership.Join(membership.Config{Name: "control-tls-test", BindAddr: freeAddr(t), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer seedAgent.Leave()

	secure, admin := freeAddr(t), freeAddr(t)
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "proxy", "--listen", "", "--secure-listen", secure,
		"--client-tls-cert", srvCert.Cert, "--client-tls-key", srvCert.Key, "--client-tls-ca", caFile,
		"--source", ens[0].ConnectString(), "--target", ens[1].ConnectString(),
		"--zk-tls-ca", m.CA, "--zk-tls-cert", m.ClientCert, "--zk-tls-key", m.ClientKey, "--dial-timeout", "10s",
		"--admin-addr", admin, "--admin-token-file", token,
		"--admin-tls-cert", srvCert.Cert, "--admin-tls-key", srvCert.Key, "--admin-tls-client-ca", caFile,
		"--metrics-addr", "", "--name", "proxy-tls", "--gossip-addr", freeAddr(t), "--gossip-join", seedAgent.Members()[0].Addr, "--gossip-insecure")
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("proxy log:\n%s", logs.String())
		}
	})
	appTLS, err := tlsconf.Load(tlsconf.Paths{Cert: app.Cert, Key: app.Key, CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool {
		out, err := zkclient.FourLetterWordTLS(secure, "ruok", time.Second, appTLS.ClientConfig("127.0.0.1"))
		return err == nil && out == "imok"
	})

	ks, ts := javaKeystores(t, dir, app.Cert, app.Key, caFile)
	java := func(args ...string) string {
		t.Helper()
		out, err := javaSecureCLI(t, secure, ks, ts, args...)
		if err != nil || strings.Contains(out, "Exception") {
			t.Fatalf("java CLI %v through the TLS proxy: %v\n%s", args, err, out)
		}
		return out
	}
	java("create", "/jtls", "from-java")
	java("create", "/jtls/child", "c1")
	if out := java("get", "/jtls/child"); !strings.Contains(out, "c1") {
		t.Fatalf("java CLI get through the TLS proxy:\n%s", out)
	}
	readBoth := func(path, want string) {
		t.Helper()
		for _, e := range ens {
			waitUntil(t, func() bool {
				c, err := zkclient.Dial(ctx, e.Addrs(), zkclient.Options{TLS: m.Client.ClientConfig, SessionTimeout: 4 * time.Second})
				if err != nil {
					return false
				}
				defer c.Close()
				d, _, err := c.Get(ctx, path)
				return err == nil && string(d) == want
			})
		}
	}
	readBoth("/jtls/child", "c1")

	// Plaintext on the TLS-only client port: refused, logged.
	if _, err := zkclient.Dial(ctx, []string{secure}, zkclient.Options{DialTimeout: 2 * time.Second}); err == nil {
		t.Fatal("a plaintext ZooKeeper client was served on the TLS-only client port")
	}
	waitUntil(t, func() bool {
		return strings.Contains(logs.String(), "refused a plaintext connection on the TLS-only client port")
	})

	// The admin endpoint: HTTPS with mutual TLS only.
	resp, err := http.Get("http://" + admin + "/admin/v1/sessions")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("plaintext HTTP to the HTTPS admin endpoint answered 200: %s", b)
		}
	}
	waitUntil(t, func() bool {
		return strings.Contains(logs.String(), "refused a plaintext HTTP request on the HTTPS-only admin endpoint")
	})
	noCert, err := tlsconf.Load(tlsconf.Paths{CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := (&http.Client{Transport: noCert.HTTPTransport()}).Get("https://" + admin + "/admin/v1/sessions"); err == nil {
		resp.Body.Close()
		t.Fatalf("the admin endpoint answered %d to a caller without a client certificate", resp.StatusCode)
	}

	// The control plane's Fleet reaches the proxy at its advertised
	// https:// URL and flips it.
	ctlTLS, err := tlsconf.Load(tlsconf.Paths{Cert: ctl.Cert, Key: ctl.Key, CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	fleet := &membership.Fleet{Agent: seedAgent, Token: "0123456789abcdef0123456789abcdef", Client: &http.Client{Transport: ctlTLS.HTTPTransport()}}
	waitUntil(t, func() bool {
		for _, mb := range seedAgent.Members() {
			if mb.Name == "proxy-tls" && strings.HasPrefix(mb.Meta.API, "https://") {
				return true
			}
		}
		return false
	})
	acked, err := fleet.Flip(ctx, "m1", 1, ensemble.Target, []string{"proxy-tls"})
	if err != nil || fmt.Sprint(acked) != "[proxy-tls]" {
		t.Fatalf("flip over HTTPS: acked %v, %v\n%s", acked, err, logs.String())
	}
	java("create", "/jtls/after-flip", "on-b")
	readBoth("/jtls/after-flip", "on-b")
	if !bytes.Contains([]byte(logs.String()), []byte(`"tls_upstream":true`)) {
		t.Errorf("the proxy's start line does not say it speaks TLS upstream:\n%s", logs.String())
	}
}

// waitUntil waits up to 60 s for f, checking every 50 ms.
func waitUntil(t *testing.T, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !f(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 60s")
		}
	}
}

// TestMirrorAuthFileIsChecked: the SASL mirror identity file must be
// private and hold user:password, or the proxy does not start (exit 2).
func TestMirrorAuthFileIsChecked(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.auth")
	if err := os.WriteFile(open, []byte("zkm-mirror:pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.auth")
	if err := os.WriteFile(bad, []byte("no-colon\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{open: "is readable by others", bad: "want one line user:password"} {
		out, code := run(t, "proxy", "--source", "127.0.0.1:1", "--target", "127.0.0.1:2", "--metrics-addr", "", "--mirror-auth-file", file)
		if code != exitUsage || !strings.Contains(out, want) {
			t.Errorf("--mirror-auth-file %s: exit %d, %q; want exit %d mentioning %q", file, code, out, exitUsage, want)
		}
	}
}
