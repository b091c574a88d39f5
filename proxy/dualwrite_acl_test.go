package proxy_test

import (
	"errors"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
)

// TestDualWriteSetACLThatLocksOutTheWriterTightensTheSecondary: alice
// creates a world-open node through the proxy, then hands it to bob with a
// setACL that shuts her out. The mirror cannot read the primary back with
// her credentials, yet the secondary must not stay readable by anyone: the
// ACL she requested is applied there too.
func TestDualWriteSetACLThatLocksOutTheWriterTightensTheSecondary(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	if err := c.AddAuth("digest", []byte("alice:pw")); err != nil {
		t.Fatal(err)
	}
	n := root + "/secret"
	if _, err := c.Create(n, []byte("topsecret"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	bob := zk.DigestACL(zk.PermAll, "bob", "pw")
	if _, err := c.SetACL(n, bob, -1); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	a := directConn(t)
	if _, _, err := a.Get(n); !errors.Is(err, zk.ErrNoAuth) {
		t.Fatalf("anonymous read on A: %v, want NOAUTH", err)
	}
	if d, _, err := cb.Get(n); !errors.Is(err, zk.ErrNoAuth) {
		acl, _, _ := cb.GetACL(n)
		t.Fatalf("anonymous read on B: %q, %v (ACL %v): the secondary stayed more open than the ACL the client set", d, err, acl)
	}
	if err := cb.AddAuth("digest", []byte("bob:pw")); err != nil {
		t.Fatal(err)
	}
	acl, _, err := cb.GetACL(n)
	if err != nil || len(acl) != 1 || acl[0] != bob[0] {
		t.Fatalf("ACL on B = %v, %v; want %v", acl, err, bob)
	}
	if v := metricValue(t, p.Registry, "zkmigrate_proxy_mirror_failures_total", "reason", "noauth_acl_applied"); v != 1 {
		t.Errorf("mirror_failures_total{reason=noauth_acl_applied} = %v, want 1", v)
	}
}
