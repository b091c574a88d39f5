package main

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// opOnlyACL is a digest-only ACL: no one but op:pw may even read the znode.
func opOnlyACL() []jute.ACL {
	h := sha1.Sum([]byte("op:pw"))
	return []jute.ACL{{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: "op:" + base64.StdEncoding.EncodeToString(h[:])}}}
}

// TestSyncNamesZnodesItMayNotRead: znodes whose ACL grants the sync's
// credentials no READ permission (ZooKeeper answers NOAUTH). Running again
// can never help, so sync must not say it resumes: it must write nothing,
// list every such znode at once, say READ permission is missing and how to
// give it, and exit 6, as validate must.
func TestSyncNamesZnodesItMayNotRead(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "noread")
	op, err := zkclient.Dial(ctx, a.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("op:pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	for _, n := range []struct {
		path string
		acl  []jute.ACL
	}{{"/y", zkclient.OpenACL}, {"/y/plain", zkclient.OpenACL}, {"/y/secret", opOnlyACL()}, {"/y/secret/kid", opOnlyACL()},
		{"/y/plain/secret2", opOnlyACL()}} {
		if _, err := op.Create(ctx, n.path, []byte("v"), n.acl, 0); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/y", "--readers", "1"}
	wants := []string{"A /y/secret: no READ permission", "A /y/plain/secret2: no READ permission", "lack READ permission",
		"--auth the identity that holds ADMIN on them", "-Dzookeeper.DigestAuthenticationProvider.superDigest="}
	for _, mode := range [][]string{{"--once"}, {}} {
		out, code := runFor(t, time.Minute, append(append([]string{"sync", "--metrics-addr", ""}, mode...), common...)...)
		if code != exitUnverifiable {
			t.Fatalf("sync %v with znodes it may not read: exit %d, want %d\n%s", mode, code, exitUnverifiable, out)
		}
		for _, want := range append(wants, "nothing written") {
			if !strings.Contains(out, want) {
				t.Errorf("sync %v output lacks %q:\n%s", mode, want, out)
			}
		}
		if strings.Contains(out, "run the same command again") {
			t.Errorf("sync %v tells to run again, which cannot help:\n%s", mode, out)
		}
	}
	if out, code := run(t, "validate", "--source", b.ConnectString(), "--target", b.ConnectString(), "--paths", "/y"); code != 0 {
		t.Fatalf("B should still be empty (equal to itself): exit %d\n%s", code, out)
	}
	bc, err := zkclient.Dial(ctx, b.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if _, err := bc.Exists(ctx, "/y"); jute.CodeOf(err) != jute.CodeNoNode {
		t.Fatalf("a refused sync wrote /y on B (%v)", err)
	}

	// With the owner's credentials the copy is exact; validate without
	// them cannot read those znodes on either side: exit 6, naming them.
	if out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", "", "--auth", "digest:op:pw"}, common...)...); code != 0 || !strings.Contains(out, "/y: equal (5 znodes") {
		t.Fatalf("sync --auth digest:op:pw: exit %d\n%s", code, out)
	}
	out, code := run(t, append([]string{"validate"}, common...)...)
	if code != exitUnverifiable || !strings.Contains(out, "/y: CANNOT VERIFY") {
		t.Fatalf("validate without READ: exit %d, want %d\n%s", code, exitUnverifiable, out)
	}
	for _, want := range append(wants, "B /y/secret: no READ permission", "B /y/plain/secret2: no READ permission") {
		if !strings.Contains(out, want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}
