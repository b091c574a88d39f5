package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestSyncOverTLSOnly copies a subtree between two TLS-only ensembles
// (secureClientPort, client certificates required) with `zk-migrate sync
// --tls-*`, and validates it; without TLS, or without a client
// certificate, the same command is refused.
func TestSyncOverTLSOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	m, err := zktest.MakeTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var ens []*zktest.Ensemble
	for _, name := range []string{"tls-a", "tls-b"} {
		e, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: name, TLS: m.Server})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		ens = append(ens, e)
	}
	za, err := zkclient.Dial(ctx, ens[0].Addrs(), zkclient.Options{TLS: m.Client.ClientConfig})
	if err != nil {
		t.Fatal(err)
	}
	defer za.Close()
	for _, p := range []string{"/mesos", "/mesos/log_replicas", "/mesos/json.info_0000000001"} {
		if _, err := za.Create(ctx, p, []byte("v"), zkclient.OpenACL, 0); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--source", ens[0].ConnectString(), "--target", ens[1].ConnectString(), "--paths", "/mesos"}
	withTLS := append([]string{"--tls-ca", m.CA, "--tls-cert", m.ClientCert, "--tls-key", m.ClientKey}, common...)
	if out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", ""}, withTLS...)...); code != 0 || !strings.Contains(out, "/mesos: equal (3 znodes") {
		t.Fatalf("sync --once over TLS: exit %d\n%s", code, out)
	}
	if out, code := run(t, append([]string{"validate"}, withTLS...)...); code != 0 || !strings.Contains(out, "equal") {
		t.Fatalf("validate over TLS: exit %d\n%s", code, out)
	}
	zb, err := zkclient.Dial(ctx, ens[1].Addrs(), zkclient.Options{TLS: m.Client.ClientConfig, SessionTimeout: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer zb.Close()
	if _, _, err := zb.Get(ctx, "/mesos/json.info_0000000001"); err != nil {
		t.Fatalf("B after the sync: %v", err)
	}
	// Plaintext to the TLS-only ports, and TLS without a client certificate.
	if out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", ""}, common...)...); code == 0 || !strings.Contains(out, "TLS only on a secureClientPort") {
		t.Fatalf("plaintext sync against TLS-only ensembles: exit %d\n%s", code, out)
	}
	if out, code := run(t, append([]string{"validate", "--tls-ca", m.CA}, common...)...); code == 0 || !strings.Contains(out, "TLS") {
		t.Fatalf("TLS without a client certificate: exit %d\n%s", code, out)
	}
	if out, code := run(t, append([]string{"validate", "--tls-cert", m.ClientCert, "--tls-key", m.ClientKey}, common...)...); code != exitUsage || !strings.Contains(out, "--tls-ca") {
		t.Fatalf("--tls-cert without --tls-ca: exit %d\n%s", code, out)
	}
}
