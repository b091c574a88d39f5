package server

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

func TestPreflightNeedsAQuorumOfBothEnsembles(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ens, err := zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "pre"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()

	var cfg control.Config
	cfg.Migration.SourceZK = ens.ConnectString()
	cfg.Migration.TargetZK = dead
	if _, err := Preflight(&cfg); err == nil || !strings.Contains(err.Error(), "ensemble B (target_zk) has no quorum") {
		t.Fatalf("dead target: %v", err)
	}
	cfg.Migration.TargetZK = ens.ConnectString()
	if notes, err := Preflight(&cfg); err != nil || len(notes) != 0 {
		t.Fatalf("healthy ensembles: %v %v", notes, err)
	}
	// One of three down: still a quorum, with a note.
	if err := ens.Kill(1); err != nil {
		t.Fatal(err)
	}
	notes, err := Preflight(&cfg)
	if err != nil || len(notes) == 0 || !strings.Contains(strings.Join(notes, " "), "not serving") {
		t.Fatalf("one server down: %v %v", notes, err)
	}
	if h := CheckEnsemble(ens.ConnectString()); !h.Quorum() || h.Serving != 2 || len(h.Versions) != 2 || !strings.HasPrefix(h.Versions[0], "3.8") {
		t.Fatalf("health: %+v", h)
	}
}

// aclPair starts two standalone ensembles, A and B; on A a client
// authenticated as op:pw owns /x/locked and /x/locked/child with Mesos'
// EVERYONE_READ_CREATOR_ALL (world may read, op may do everything), beside
// an open /x/plain.
func aclPair(t *testing.T) (a, b *zktest.Ensemble) {
	t.Helper()
	ctx := context.Background()
	var err error
	if a, err = zktest.Start(ctx, zktest.Config{Servers: 1, Name: "acl-a"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	if b, err = zktest.Start(ctx, zktest.Config{Servers: 1, Name: "acl-b"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	op, err := zkclient.Dial(ctx, a.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("op:pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	h := sha1.Sum([]byte("op:pw"))
	opACL := []jute.ACL{{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}},
		{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: "op:" + base64.StdEncoding.EncodeToString(h[:])}}}
	for _, n := range []struct {
		path string
		acl  []jute.ACL
	}{{"/x", zkclient.OpenACL}, {"/x/plain", zkclient.OpenACL}, {"/x/locked", opACL}, {"/x/locked/child", opACL}} {
		if _, err := op.Create(ctx, n.path, []byte("v"), n.acl, 0); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// TestPreflightListsZnodesWithHiddenACLs: before phase 1 starts, the
// pre-flight reads both ensembles with sync.auth and lists every znode
// whose digest ACL ZooKeeper would hide from the replicator, with the fix.
func TestPreflightListsZnodesWithHiddenACLs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	a, _ := aclPair(t)
	var cfg control.Config
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = a.ConnectString(), a.ConnectString() // A on both sides: B is checked too
	cfg.Migration.Paths = []string{"/x"}
	cfg.Sync.Auth = []string{"digest:repl:secret-pw"}
	_, err := Preflight(&cfg)
	if err == nil {
		t.Fatal("pre-flight passed with ACLs the replicator cannot read")
	}
	for _, want := range []string{"pre-flight", "A /x/locked: world:anyone:r, digest:op:x:cdrwa", "A /x/locked/child:", "B /x/locked:",
		"ADMIN permission", "digest:op:<password>", "superDigest", "digest:repl:***"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("pre-flight error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "secret-pw") || strings.Contains(err.Error(), "/x/plain") {
		t.Errorf("pre-flight error shows a password or a readable znode:\n%v", err)
	}
	cfg.Sync.Auth = []string{"digest:op:pw"}
	if _, err := Preflight(&cfg); err != nil {
		t.Fatalf("pre-flight with the owner's credentials: %v", err)
	}
}

// TestPhase1CannotSucceedWithHiddenACLs: past the pre-flight (a znode
// appears later, or the pre-flight was skipped), phase 1's sync alerts,
// leaves those znodes alone on B, and its verification fails naming them.
func TestPhase1CannotSucceedWithHiddenACLs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	a, b := aclPair(t)
	var cfg control.Config
	cfg.Migration.ID = "acl"
	cfg.Migration.SourceZK, cfg.Migration.TargetZK = a.ConnectString(), b.ConnectString()
	cfg.Migration.Paths = []string{"/x"}
	cfg.Migration.HealthCheckIntervalSec = 3600
	cfg.Sync.Auth = []string{"digest:repl:pw"}
	raw, err := json.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &control.Migration{ID: "acl", Config: control.MigrationConfig{SourceZK: cfg.Migration.SourceZK, TargetZK: cfg.Migration.TargetZK, Raw: raw}}
	var mu sync.Mutex
	var audit []string
	sy := &Syncer{IsLeader: func() bool { return true }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), VerifyTimeout: time.Minute,
		Record: func(_ *control.Migration, event, detail string) {
			mu.Lock()
			defer mu.Unlock()
			audit = append(audit, event+" "+detail)
		}}
	defer sy.Undo(context.Background(), m)
	err = sy.Verify(context.Background(), m)
	// Not the timeout's "not verified equal": the hidden ACLs, with the fix.
	if err == nil || !strings.Contains(err.Error(), "phase 1 cannot succeed") || !strings.Contains(err.Error(), "A /x/locked/child:") ||
		!strings.Contains(err.Error(), "superDigest") {
		t.Fatalf("phase 1 verification with hidden ACLs: %v", err)
	}
	mu.Lock()
	if !strings.Contains(strings.Join(audit, "\n"), "acl_unreadable") {
		t.Errorf("no acl_unreadable alert in the audit trail: %q", audit)
	}
	mu.Unlock()
	cb, err := zkclient.Dial(context.Background(), b.Addrs(), zkclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if _, err := cb.Exists(context.Background(), "/x/plain"); err != nil {
		t.Fatalf("the readable rest was not copied: %v", err)
	}
	if _, err := cb.Exists(context.Background(), "/x/locked"); jute.CodeOf(err) != jute.CodeNoNode {
		t.Fatalf("/x/locked copied to B with a hidden ACL: %v", err)
	}
}
