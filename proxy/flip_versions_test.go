package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestFlipVersionsOfARecreatedZnode: a version offset recorded at a flip
// belongs to the znode that existed then. Once that znode is deleted and
// created again (through this proxy, or by a client of another proxy),
// the new znode starts at version 0 on both ensembles, so the client must
// see B's own versions for it, and a conditional write with them must
// succeed. Found by the flip scenario's linearizability check
// (cmd/zk-migrate TestFlipScenarioWithMesos): a re-created register showed
// versions -5 and 4 and refused writes with the version just read.
func TestFlipVersionsOfARecreatedZnode(t *testing.T) {
	root := testRoot(t)
	p, cb := startDualProxy(t, root)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	// Two znodes at version 5 on A and 0 on B (same data).
	for _, n := range []string{"/mine", "/theirs"} {
		if _, err := ca.Create(root+n, nil, 0, acl); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			if _, err := ca.Set(root+n, []byte("same"), -1); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cb.Create(root+n, []byte("same"), 0, acl); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := connect(t, []string{p.Addr}, 4*time.Second)
	for _, n := range []string{"/mine", "/theirs"} {
		if _, st, err := c.Get(root + n); err != nil || st.Version != 5 {
			t.Fatalf("%s before the flip: version %d %v", n, st.Version, err)
		}
	}
	waitMirrored(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	// Deleted with the version read before the flip, created again, both
	// through the proxy: the new znode's versions are its own.
	if err := c.Delete(root+"/mine", 5); err != nil {
		t.Fatalf("delete with the version read before the flip: %v", err)
	}
	if _, err := c.Create(root+"/mine", []byte("new"), 0, acl); err != nil {
		t.Fatal(err)
	}
	st, err := c.Set(root+"/mine", []byte("x"), -1)
	if err != nil || st.Version != 1 {
		t.Fatalf("first write of the re-created znode: version %d %v, want 1", st.Version, err)
	}
	if _, err := c.Set(root+"/mine", []byte("y"), 1); err != nil {
		t.Fatalf("conditional write with the version just returned: %v", err)
	}
	// Deleted and created again on B by someone else (another proxy's
	// client): the next read shows B's versions, and they work.
	if err := cb.Delete(root+"/theirs", -1); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Create(root+"/theirs", []byte("other"), 0, acl); err != nil {
		t.Fatal(err)
	}
	_, st, err = c.Get(root + "/theirs")
	if err != nil || st.Version != 0 {
		t.Fatalf("re-created znode read after the flip: version %d %v, want 0", st.Version, err)
	}
	if _, err := c.Set(root+"/theirs", []byte("z"), 0); err != nil {
		t.Fatalf("conditional write with the version read: %v", err)
	}
}
