package main

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// runFor is run with a deadline, for commands that must exit by themselves
// (sync without --once runs until stopped when it does not refuse).
func runFor(t *testing.T, d time.Duration, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%v still running after %v:\n%s", args, d, out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestSyncRefusesACLsZooKeeperHides is issue 7's scenario: a Mesos-like
// client authenticated as op:pw owns znodes with EVERYONE_READ_CREATOR_ALL.
// Without op's credentials ZooKeeper shows their ACL as op:x: sync must
// refuse (with and without --once) and leave B untouched, validate must not
// call a copy equal. With op's credentials, or the super digest, the copy
// is exact and verified.
func TestSyncRefusesACLsZooKeeperHides(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	super := []string{zktest.SuperDigestFlag("super", "pw")}
	a, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "acl-a", JVMFlags: super})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "acl-b", JVMFlags: super})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	dial := func(ens *zktest.Ensemble, secret string) *zkclient.Conn {
		c, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte(secret)}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	h := sha1.Sum([]byte("op:pw"))
	opACL := []jute.ACL{{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}},
		{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: "op:" + base64.StdEncoding.EncodeToString(h[:])}}}
	opA := dial(a, "op:pw")
	for _, n := range []struct {
		path string
		acl  []jute.ACL
	}{{"/x", zkclient.OpenACL}, {"/x/plain", zkclient.OpenACL}, {"/x/locked", opACL}, {"/x/locked/child", opACL}} {
		if _, err := opA.Create(ctx, n.path, []byte("v"), n.acl, 0); err != nil {
			t.Fatal(err)
		}
	}
	superB := dial(b, "super:pw")
	untouched := func(when string) {
		t.Helper()
		if _, err := superB.Exists(ctx, "/x"); jute.CodeOf(err) != jute.CodeNoNode {
			t.Fatalf("%s: B has /x (%v): a refused sync wrote", when, err)
		}
	}
	common := []string{"--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/x", "--readers", "1"}
	for _, mode := range [][]string{{"--once"}, {}} {
		args := append(append([]string{"sync", "--metrics-addr", ""}, mode...), common...)
		out, code := runFor(t, time.Minute, args...)
		if code != exitUnverifiable {
			t.Fatalf("sync %v with ACLs hidden: exit %d, want %d\n%s", mode, code, exitUnverifiable, out)
		}
		for _, want := range []string{"nothing written", "A /x/locked: world:anyone:r, digest:op:x:cdrwa", "A /x/locked/child:",
			"ADMIN permission", "--auth digest:op:<password>", "-Dzookeeper.DigestAuthenticationProvider.superDigest="} {
			if !strings.Contains(out, want) {
				t.Errorf("sync %v output lacks %q:\n%s", mode, want, out)
			}
		}
		untouched("sync " + strings.Join(mode, ""))
	}

	exact := func(when string) {
		t.Helper()
		for _, p := range []string{"/x/locked", "/x/locked/child"} {
			acl, _, err := superB.GetACL(ctx, p)
			if err != nil || len(acl) != 2 || acl[1] != opACL[1] {
				t.Fatalf("%s: ACL of %s on B = %v (%v), want %v", when, p, acl, err, opACL)
			}
		}
	}
	// With the owner's credentials: exact and verified.
	if out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", "", "--auth", "digest:op:pw"}, common...)...); code != 0 || !strings.Contains(out, "/x: equal (4 znodes") {
		t.Fatalf("sync --auth digest:op:pw: exit %d\n%s", code, out)
	}
	exact("sync as op")
	for _, auth := range []string{"digest:op:pw", "digest:super:pw"} {
		if out, code := run(t, append([]string{"validate", "--auth", auth}, common...)...); code != 0 || !strings.Contains(out, "/x: equal") {
			t.Fatalf("validate --auth %s: exit %d\n%s", auth, code, out)
		}
	}
	// Without them, both sides read op:x: not equal, and not "different".
	out, code := run(t, append([]string{"validate"}, common...)...)
	if code != exitUnverifiable || !strings.Contains(out, "/x: CANNOT VERIFY") || !strings.Contains(out, "B /x/locked/child:") {
		t.Fatalf("validate without ADMIN: exit %d, want %d\n%s", code, exitUnverifiable, out)
	}
	// The owner still owns its copy on B.
	if err := dial(b, "op:pw").Delete(ctx, "/x/locked/child", -1); err != nil {
		t.Fatalf("op locked out of its znode on B: %v", err)
	}

	// With the super digest: exact and verified too.
	for _, p := range []string{"/x/locked", "/x/plain", "/x"} {
		if err := superB.Delete(ctx, p, -1); err != nil {
			t.Fatal(err)
		}
	}
	if out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", "", "--auth", "digest:super:pw"}, common...)...); code != 0 || !strings.Contains(out, "/x: equal (4 znodes") {
		t.Fatalf("sync --auth digest:super:pw: exit %d\n%s", code, out)
	}
	exact("sync as super")
}
