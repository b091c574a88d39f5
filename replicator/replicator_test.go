package replicator

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// Two real three-server ensembles: A is the source, B the target.
var ensA, ensB *zktest.Ensemble

func TestMain(m *testing.M) {
	if os.Getenv("ZKM_SKIP_ZK") != "" {
		os.Exit(0)
	}
	var err error
	ctx := context.Background()
	// Only A knows the super digest: a super reader reads A's real ACLs
	// and B's redacted ones (TestHiddenACLsOnTheTarget).
	ensA, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "a", JVMFlags: []string{zktest.SuperDigestFlag("super", "pw")}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ensB, err = zktest.Start(ctx, zktest.Config{Servers: 3, Name: "b"})
	if err != nil {
		ensA.Close()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	ensA.Close()
	ensB.Close()
	os.Exit(code)
}

// The replicator authenticates as repl:pw; restrictive test ACLs grant it
// everything and the world only READ, as Mesos' EVERYONE_READ_CREATOR_ALL.
var replAuth = []zkclient.Auth{{Scheme: "digest", Secret: []byte("repl:pw")}}

func digestID(user, pw string) string {
	h := sha1.Sum([]byte(user + ":" + pw))
	return user + ":" + base64.StdEncoding.EncodeToString(h[:])
}

var restrictedACL = []jute.ACL{
	{Perms: jute.PermRead, ID: jute.Id{Scheme: "world", ID: "anyone"}},
	{Perms: jute.PermAll, ID: jute.Id{Scheme: "digest", ID: digestID("repl", "pw")}},
}

func dial(t testing.TB, ens *zktest.Ensemble) *zkclient.Conn {
	t.Helper()
	c, err := zkclient.Dial(context.Background(), ens.Addrs(), zkclient.Options{Auth: replAuth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func endpoints(t testing.TB, readers int) Endpoints {
	var ep Endpoints
	for i := 0; i < readers; i++ {
		ep.Source = append(ep.Source, dial(t, ensA))
		ep.Target = append(ep.Target, dial(t, ensB))
	}
	return ep
}

var rootSeq atomic.Int64

func testRoot(t testing.TB) string {
	return fmt.Sprintf("/%s-%d", strings.ReplaceAll(t.Name(), "/", "_"), rootSeq.Add(1))
}

// build creates nodes on c in pipelined batches; paths must come parents
// first.
func build(t testing.TB, c *zkclient.Conn, ops []zkclient.MultiOp) {
	t.Helper()
	var calls []*zkclient.Call
	for i := 0; i < len(ops); i += 500 {
		calls = append(calls, c.GoMulti(ops[i:min(i+500, len(ops))]))
	}
	for _, call := range calls {
		<-call.Done
		if i, err := zkclient.MultiErr(call); err != nil {
			t.Fatalf("build op %d: %v", i, err)
		}
	}
}

func create(p string, data []byte, acl []jute.ACL, flags int32) zkclient.MultiOp {
	if acl == nil {
		acl = zkclient.OpenACL
	}
	return zkclient.MultiOp{Op: jute.OpCreate, Req: &jute.CreateRequest{Path: p, Data: data, ACL: acl, Flags: flags}}
}

func mustValidate(t *testing.T, ep Endpoints, root string) Verdict {
	t.Helper()
	vs, err := Validate(context.Background(), ep, []string{root}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !vs[0].Equal {
		t.Fatalf("digests differ for %s: %d vs %d nodes; first differences: %v", root, vs[0].SourceNodes, vs[0].TargetNodes, vs[0].Differences)
	}
	return vs[0]
}

// TestSyncCopiesEverythingExactly builds a tree with what real clusters
// hold, copies it and proves equality by digest.
func TestSyncCopiesEverythingExactly(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a := dial(t, ensA)
	var ops []zkclient.MultiOp
	ops = append(ops, create(root, []byte("root"), nil, 0))
	// A restrictive parent with children: its ACL must not block them.
	ops = append(ops, create(root+"/locked", []byte("l"), restrictedACL, 0))
	for i := 0; i < 50; i++ {
		ops = append(ops, create(fmt.Sprintf("%s/locked/n%02d", root, i), []byte(fmt.Sprint(i)), restrictedACL, 0))
	}
	// Sequential children, persistent and with a gap.
	ops = append(ops, create(root+"/seq", nil, nil, 0))
	// A deep path.
	deep := root
	for i := 0; i < 40; i++ {
		deep += fmt.Sprintf("/d%d", i)
		ops = append(ops, create(deep, []byte{byte(i)}, nil, 0))
	}
	build(t, a, ops)
	for i := 0; i < 5; i++ {
		if _, err := a.Create(ctx, root+"/seq/item-", []byte("s"), zkclient.OpenACL, jute.FlagPersistentSequential); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Delete(ctx, root+"/seq/item-0000000002", -1); err != nil {
		t.Fatal(err)
	}
	// A 1 MB znode (just under jute.maxbuffer with its request framing).
	big := make([]byte, 1000*1000)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if _, err := a.Create(ctx, root+"/big", big, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	// An ephemeral owned by a client session of its own.
	owner := dial(t, ensA)
	if _, err := owner.Create(ctx, root+"/eph", []byte("alive"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}

	ep := endpoints(t, 2)
	res, err := Sync(ctx, ep, []string{root}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	v := mustValidate(t, ep, root)
	if v.SourceNodes != 1+51+1+4+40+1+1 {
		t.Fatalf("source has %d nodes", v.SourceNodes)
	}
	// Names, ACLs, ephemeral ownership on the target.
	b := ep.Target[0]
	kids, _, err := b.Children(ctx, root+"/seq")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(kids)
	if strings.Join(kids, ",") != "item-0000000000,item-0000000001,item-0000000003,item-0000000004" {
		t.Fatalf("sequential names on target: %v", kids)
	}
	acl, _, err := b.GetACL(ctx, root+"/locked")
	if err != nil || aclKey(acl) != aclKey(restrictedACL) {
		t.Fatalf("restrictive parent ACL on target = %v, %v", acl, err)
	}
	st, err := b.Exists(ctx, root+"/eph")
	if err != nil || st.EphemeralOwner != b.SessionID() {
		t.Fatalf("ephemeral on target: owner %x, want the writer session %x (%v)", st.EphemeralOwner, b.SessionID(), err)
	}
	if got, _, err := b.Get(ctx, root+"/big"); err != nil || len(got) != len(big) {
		t.Fatalf("1 MB znode: %d bytes, %v", len(got), err)
	}
	// A second sync has nothing to do.
	res, err = Sync(ctx, ep, []string{root}, Options{})
	if err != nil || res.Created+res.Updated+res.Deleted+res.ACLsSet != 0 {
		t.Fatalf("second sync wrote %+v, %v", res, err)
	}
}

// TestSyncConvergesDeletesAndUpdates changes both sides after a copy.
func TestSyncConvergesDeletesAndUpdates(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a := dial(t, ensA)
	build(t, a, []zkclient.MultiOp{create(root, nil, nil, 0), create(root+"/x", []byte("1"), nil, 0),
		create(root+"/x/y", []byte("2"), nil, 0), create(root+"/z", []byte("3"), nil, 0)})
	ep := endpoints(t, 1)
	if _, err := Sync(ctx, ep, []string{root}, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Set(ctx, root+"/z", []byte("changed"), -1); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, root+"/x/y", -1); err != nil {
		t.Fatal(err)
	}
	if err := a.SetACL(ctx, root+"/x", restrictedACL, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := ep.Target[0].Create(ctx, root+"/stray", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	res, err := Sync(ctx, ep, []string{root}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Updated != 1 || res.Deleted != 2 || res.ACLsSet != 1 {
		t.Fatalf("incremental sync did %+v, want 1 update, 2 deletes, 1 ACL", res)
	}
	mustValidate(t, ep, root)
}

// TestSyncResumesAfterInterruption cancels a large copy part way and checks
// that the next run copies only what is missing.
func TestSyncResumesAfterInterruption(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a := dial(t, ensA)
	const n = 20000
	ops := []zkclient.MultiOp{create(root, nil, nil, 0)}
	for i := 0; i < n/100; i++ {
		dir := fmt.Sprintf("%s/dir%03d", root, i)
		ops = append(ops, create(dir, nil, nil, 0))
		for j := 0; j < 99; j++ {
			ops = append(ops, create(fmt.Sprintf("%s/n%02d", dir, j), make([]byte, 100), nil, 0))
		}
	}
	build(t, a, ops)
	ep := endpoints(t, 2)
	var prog Progress
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		for prog.Written.Load() < n/3 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := Sync(cctx, ep, []string{root}, Options{Progress: &prog, BatchOps: 200, Window: 2}); err == nil {
		t.Fatal("interrupted sync reported success")
	}
	res, err := Sync(ctx, ep, []string{root}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Created >= len(ops) || res.Created == 0 {
		t.Fatalf("resumed sync created %d of %d: it restarted instead of resuming", res.Created, len(ops))
	}
	t.Logf("first run wrote %d, the resumed run created %d of %d", prog.Written.Load(), res.Created, len(ops))
	mustValidate(t, ep, root)
}

// TestSequenceCountersAfterCopy: Mesos elects the lowest json.info_
// sequence. After the copy a new contender on the target must get a suffix
// above every existing one, so the leader stays the same.
func TestSequenceCountersAfterCopy(t *testing.T) {
	ctx := context.Background()
	root := testRoot(t)
	a := dial(t, ensA)
	if _, err := a.Create(ctx, root, nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	masters := dial(t, ensA)
	// Churn: masters came and went, so A's counter is far above the count
	// of nodes left.
	for i := 0; i < 37; i++ {
		p, err := masters.Create(ctx, root+"/json.info_", []byte("old"), zkclient.OpenACL, jute.FlagEphemeralSequential)
		if err != nil {
			t.Fatal(err)
		}
		if i%12 != 11 {
			if err := masters.Delete(ctx, p, -1); err != nil {
				t.Fatal(err)
			}
		}
	}
	ep := endpoints(t, 1)
	res, err := Sync(ctx, ep, []string{root}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.PaddedParents != 1 {
		t.Fatalf("padded %d parents", res.PaddedParents)
	}
	mustValidate(t, ep, root)
	leaderOf := func(c *zkclient.Conn) string {
		kids, _, err := c.Children(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(kids)
		return kids[0]
	}
	leader := leaderOf(a)
	newOnB, err := ep.Target[0].Create(ctx, root+"/json.info_", []byte("new"), zkclient.OpenACL, jute.FlagEphemeralSequential)
	if err != nil {
		t.Fatal(err)
	}
	newOnA, err := masters.Create(ctx, root+"/json.info_", []byte("new"), zkclient.OpenACL, jute.FlagEphemeralSequential)
	if err != nil {
		t.Fatal(err)
	}
	if path.Base(newOnB) < path.Base(newOnA) {
		t.Fatalf("next suffix on B %s is below A's %s: a new master would jump the queue", newOnB, newOnA)
	}
	if got := leaderOf(ep.Target[0]); got != leader {
		t.Fatalf("leader on B %s, on A %s", got, leader)
	}
}

// TestSync100kNodes copies a 100,000-znode tree with mixed ACLs,
// sequential names, ephemerals, a 1 MB znode and a 100-deep path, and
// proves it by digest.
func TestSync100kNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("large")
	}
	ctx := context.Background()
	root := testRoot(t)
	a := dial(t, ensA)
	ops := []zkclient.MultiOp{create(root, nil, nil, 0)}
	for d := 0; d < 1000; d++ {
		dir := fmt.Sprintf("%s/d%04d", root, d)
		ops = append(ops, create(dir, nil, nil, 0))
		for j := 0; j < 99; j++ {
			var acl []jute.ACL
			if (d+j)%7 == 0 {
				acl = restrictedACL
			}
			ops = append(ops, create(fmt.Sprintf("%s/n%02d", dir, j), make([]byte, 100), acl, 0))
		}
	}
	ops = append(ops, create(root+"/seq", nil, nil, 0))
	deep := root
	for i := 0; i < 100; i++ {
		deep += "/x"
		ops = append(ops, create(deep, nil, nil, 0))
	}
	start := time.Now()
	build(t, a, ops)
	big := make([]byte, 1000*1000)
	if _, err := a.Create(ctx, root+"/big", big, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := a.Create(ctx, root+"/seq/s-", nil, zkclient.OpenACL, jute.FlagPersistentSequential); err != nil {
			t.Fatal(err)
		}
	}
	owner := dial(t, ensA)
	var calls []*zkclient.Call
	for i := 0; i < 200; i++ {
		calls = append(calls, owner.Go(jute.OpCreate, &jute.CreateRequest{Path: fmt.Sprintf("%s/d%04d/eph", root, i),
			ACL: zkclient.OpenACL, Flags: jute.FlagEphemeral}, &jute.CreateResponse{}))
	}
	for _, c := range calls {
		<-c.Done
		if c.Err != nil {
			t.Fatal(c.Err)
		}
	}
	t.Logf("built %d znodes on A in %v", len(ops)+501, time.Since(start).Round(time.Millisecond))

	ep := endpoints(t, 4)
	res, err := Sync(ctx, ep, []string{root}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("copied %d znodes (%d bytes) in %v: %.0f znodes/s", res.Nodes, res.Bytes, res.Elapsed.Round(time.Millisecond),
		float64(res.Nodes)/res.Elapsed.Seconds())
	v := mustValidate(t, ep, root)
	if v.SourceNodes < 100000 {
		t.Fatalf("only %d nodes", v.SourceNodes)
	}
}
