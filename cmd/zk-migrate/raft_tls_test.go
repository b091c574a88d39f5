package main

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
)

// TestRaftCertificateWithoutPeerIdentityIsAUsageError: a control node
// given an API client's certificate (clientAuth only, CN=alice) or a
// certificate without the Raft peer identity as its --raft-tls-cert
// refuses to start (exit 2) and says what the certificate needs, instead
// of running a node its peers refuse.
func TestRaftCertificateWithoutPeerIdentityIsAUsageError(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	ca, err := tlstest.NewCA("one CA for everything")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	alice, err := ca.IssueWith(dir, "alice", tlstest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, "alice")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := ca.Issue(dir, "c1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, iss := range []tlstest.Issued{alice, plain} {
		out, code := run(t, "control", "--id", "c1", "--raft-addr", freeAddr(t), "--api-addr", freeAddr(t),
			"--data-dir", filepath.Join(dir, "d"), "--tokens", tokens, "--bootstrap",
			"--raft-tls-cert", iss.Cert, "--raft-tls-key", iss.Key, "--raft-tls-ca", caFile)
		if code != 2 || !strings.Contains(out, "not a control node's Raft certificate") || !strings.Contains(out, `DNS SAN "zk-migrate-raft"`) {
			t.Fatalf("%s as the Raft certificate: exit %d, want 2 with the fix:\n%s", iss.Cert, code, out)
		}
	}
}
