package proxy_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// schemeACLs are one ACL per scheme ZooKeeper ships: world, digest, ip,
// sasl and x509 (the subject DN of a client certificate).
func schemeACLs() map[string][]zk.ACL {
	return map[string][]zk.ACL{
		"world":  zk.WorldACL(zk.PermRead),
		"digest": zk.DigestACL(zk.PermAll, "carol", "carol-pw"),
		"ip":     {{Perms: zk.PermRead | zk.PermWrite, Scheme: "ip", ID: "127.0.0.1"}},
		"sasl":   {{Perms: zk.PermAll, Scheme: "sasl", ID: "alice"}},
		"x509":   {{Perms: zk.PermAll, Scheme: "x509", ID: "CN=app"}},
		"mixed": {{Perms: zk.PermRead, Scheme: "world", ID: "anyone"}, {Perms: zk.PermAll, Scheme: "sasl", ID: "bob"},
			{Perms: zk.PermAdmin, Scheme: "x509", ID: "CN=zk-client"}},
	}
}

// TestACLSchemesSurviveSnapshotMirrorAndFlip gives znodes every ACL scheme
// on A and copies them to B with the replicator's snapshot; then writes
// more through a TLS two-ensemble proxy (creates with each scheme, setACL
// changing schemes), flips, and writes again (mirrored back to A). A
// super-user reader, which sees every ACL as it is (hashes included),
// compares every node's ACL on both ensembles, and the replicator's
// digests agree.
func TestACLSchemesSurviveSnapshotMirrorAndFlip(t *testing.T) {
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := fmt.Sprintf("/acls-%d", time.Now().UnixNano())
	sa, sb := sp.superConn(t, sp.A), sp.superConn(t, sp.B)
	toJute := func(acl []zk.ACL) []jute.ACL {
		out := make([]jute.ACL, len(acl))
		for i, a := range acl {
			out[i] = jute.ACL{Perms: a.Perms, ID: jute.Id{Scheme: a.Scheme, ID: a.ID}}
		}
		return out
	}
	names := make([]string, 0, len(schemeACLs()))
	for n := range schemeACLs() {
		names = append(names, n)
	}
	sort.Strings(names)

	// The snapshot: A's tree copied to B.
	if _, err := sa.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := sa.Create(ctx, root+"/snap", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := sa.Create(ctx, root+"/snap/"+n, []byte(n), toJute(schemeACLs()[n]), 0); err != nil {
			t.Fatalf("create %s with a %s ACL on A: %v", root+"/snap/"+n, n, err)
		}
	}
	if _, err := replicator.Sync(ctx, replicator.Endpoints{Source: []*zkclient.Conn{sa}, Target: []*zkclient.Conn{sb}}, []string{root}, replicator.Options{}); err != nil {
		t.Fatalf("snapshot A to B: %v", err)
	}
	compareACLs(t, ctx, sa, sb, root)

	// The mirror: an operator's client (super digest) through the proxy.
	p, _ := sp.startProxy(t)
	c, _ := connectTLS(t, []string{p.TLSAddr}, sp.appTLS(t), 6*time.Second)
	if err := c.AddAuth("digest", []byte(superUser+":"+superPw)); err != nil {
		t.Fatal(err)
	}
	write := func(dir, reACL, scheme string) {
		t.Helper()
		if _, err := c.Create(root+"/"+dir, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if _, err := c.Create(root+"/"+dir+"/"+n, []byte(n), 0, schemeACLs()[n]); err != nil {
				t.Fatalf("create %s/%s/%s through the proxy: %v", root, dir, n, err)
			}
		}
		// setACL across schemes on a node written before.
		if _, err := c.SetACL(reACL, schemeACLs()[scheme], -1); err != nil {
			t.Fatal(err)
		}
		waitMirrored(t, p)
	}
	write("mirror", root+"/snap/world", "x509")
	compareACLs(t, ctx, sa, sb, root)

	// The flip: B serves, A receives the mirror.
	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	write("flip", root+"/mirror/digest", "mixed")
	// ZooKeeper expands an auth:: ACL to every identity of the connection:
	// through a TLS proxy that includes the x509 DN of the proxy's client
	// certificate, shared by all its clients (README, "The proxy's
	// certificate is one identity upstream").
	if _, err := c.Create(root+"/authacl", nil, 0, zk.AuthACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	waitMirrored(t, p)
	got, _, err := sb.GetACL(ctx, root+"/authacl")
	if err != nil {
		t.Fatal(err)
	}
	shared := false
	for _, a := range got {
		shared = shared || a.ID == (jute.Id{Scheme: "x509", ID: "CN=zk-client"})
	}
	if !shared {
		t.Fatalf("auth:: through the TLS proxy gave %v; the README says it includes the proxy's x509 identity", got)
	}
	compareACLs(t, ctx, sa, sb, root)
	v, err := replicator.Validate(ctx, replicator.Endpoints{Source: []*zkclient.Conn{sa}, Target: []*zkclient.Conn{sb}}, []string{root}, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, verdict := range v {
		if !verdict.Equal {
			t.Fatalf("%s differs between the ensembles after the flip: %+v", root, verdict)
		}
	}
}

// compareACLs walks root on a and b and fails at the first node whose ACL
// (or existence) differs; it returns the nodes compared.
func compareACLs(t *testing.T, ctx context.Context, a, b *zkclient.Conn, root string) int {
	t.Helper()
	_ = a.Sync(ctx, root)
	_ = b.Sync(ctx, root)
	n := 0
	var walk func(p string)
	walk = func(p string) {
		aa, _, errA := a.GetACL(ctx, p)
		ab, _, errB := b.GetACL(ctx, p)
		if errA != nil || errB != nil {
			t.Fatalf("getACL %s: A %v, B %v", p, errA, errB)
		}
		if !aclEqual(aa, ab) {
			t.Fatalf("%s: ACL on A %v, on B %v", p, aa, ab)
		}
		n++
		ka, _, errA := a.Children(ctx, p)
		kb, _, errB := b.Children(ctx, p)
		if errA != nil || errB != nil {
			t.Fatalf("children %s: A %v, B %v", p, errA, errB)
		}
		sort.Strings(ka)
		sort.Strings(kb)
		if fmt.Sprint(ka) != fmt.Sprint(kb) {
			t.Fatalf("%s: children on A %v, on B %v", p, ka, kb)
		}
		for _, k := range ka {
			walk(p + "/" + k)
		}
	}
	walk(root)
	t.Logf("%d nodes under %s have the same ACL on both ensembles", n, root)
	return n
}
