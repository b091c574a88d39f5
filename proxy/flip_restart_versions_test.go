package proxy_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// TestProxyKilledAroundAFlipNumbersVersionsAsItsPeers: the chaos demo's
// framework host's proxy SIGKILLed around a flip and restarted from its
// --state-dir (SPEC.md 4.10, "Across a restart"; 5c). Two proxies, the
// second with a state directory; a znode at version 5 on A, its copy at
// 0 on B; both proxies' clients read it.
//
//  1. The forward flip: the second proxy is killed inside the barrier
//     (the first holds and swaps), restarted on A (the control plane
//     records the old epoch until the flip is done) and flipped by a
//     one-shot flip while no peer answers for the new epoch yet. It must
//     number the znode as its peer does. Before, a SIGKILL lost every
//     path shown since the last flip (the versions file was written at
//     flips and clean stops only): the restarted proxy translated
//     nothing and showed B's own versions, 5 behind its peer's (the
//     demo's register: about 230 behind, versions 15 s old acknowledged
//     again).
//  2. The reverse flip: the second proxy is killed, the first proxy
//     flips back to A in the barrier, A drifts one version from B (the
//     mirror writes the secondary once per pass), the second restarts on B and
//     catches up with a one-shot flip, its peer unreachable then: its own
//     reading is one version off its peer's. Once the peer answers it
//     must take the peer's numbering. Before, it kept its own for good
//     (the demo's register: versions a client of another proxy had been
//     given, acknowledged twice).
//
// Each time a conditional setData with the version read through one proxy
// must succeed through the other.
func TestProxyKilledAroundAFlipNumbersVersionsAsItsPeers(t *testing.T) {
	root := testRoot(t)
	b := secondary(t)
	cb, _ := connect(t, b.Addrs(), 10*time.Second)
	ca := directConn(t)
	acl := zk.WorldACL(zk.PermAll)
	if _, err := cb.Create(root, nil, 0, acl); err != nil {
		t.Fatal(err)
	}
	r := root + "/register"
	for _, c := range []*zk.Conn{ca, cb} {
		if _, err := c.Create(r, []byte("0"), 0, acl); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ { // version 5 on A, B's copy at 0
		if _, err := ca.Set(r, []byte("0"), -1); err != nil {
			t.Fatal(err)
		}
	}
	fencePath := testFence(t)
	on := func(primary ensemble.Name) (up, sec []string) {
		if primary == ensemble.Target {
			return b.Addrs(), ens.Addrs()
		}
		return ens.Addrs(), b.Addrs()
	}
	up, sec := on(ensemble.Source)
	p1, err := proxytest.Start(proxy.Config{FencePath: fencePath, Upstream: up, Secondary: sec, Name: "p1", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p1.Close)

	// The second proxy's peer is the first, reachable only when peerUp.
	var peerUp atomic.Bool
	peers := func(_ context.Context, epoch int64, primary ensemble.Name) (map[string]proxy.PathOffset, error) {
		if !peerUp.Load() {
			return nil, errors.New("injected: no peer answers for this epoch yet")
		}
		o := p1.VersionOffsets()
		if o.Epoch != epoch || o.Primary != primary || !o.Agreed {
			return nil, errors.New("the peer does not hold that epoch")
		}
		return o.Paths, nil
	}
	dir := t.TempDir()
	cfg2 := func(primary ensemble.Name, epoch int64) proxy.Config {
		up, sec := on(primary)
		return proxy.Config{FencePath: fencePath, Upstream: up, Secondary: sec, PrimaryName: primary, Epoch: epoch, Name: "p2",
			StateDir: dir, FenceLease: time.Second, PeerOffsets: peers, Logger: testLogger(t)}
	}
	p2, err := proxytest.Start(cfg2(ensemble.Source, 0))
	if err != nil {
		t.Fatal(err)
	}
	addr2 := p2.Addr
	t.Cleanup(func() { p2.Close() })
	c1, _ := connect(t, []string{p1.Addr}, 10*time.Second) // a pause budget of 3.3 s: loaded machines
	c2, _ := connect(t, []string{addr2}, 10*time.Second)
	for _, c := range []*zk.Conn{c1, c2} {
		if _, st, err := c.Get(r); err != nil || st.Version != 5 {
			t.Fatalf("read before the flip: version %d %v, want 5", st.Version, err)
		}
	}
	// The version file records what the second proxy's client was shown
	// soon after (a SIGKILL keeps what was written by then).
	versionsFile := filepath.Join(dir, "versions")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(versionsFile); strings.Contains(string(b), r) {
			break
		}
	}
	// kill stops the second proxy as a SIGKILL would: its state directory
	// is left as it was (Close would write the version file).
	kill := func() {
		saved := snapshotDir(t, dir)
		p2.Close()
		restoreDir(t, dir, saved)
	}
	restart := func(primary ensemble.Name, epoch int64) {
		var err error
		if p2, err = proxytest.StartOn(addr2, cfg2(primary, epoch)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	barrier := func(epoch int64, primary ensemble.Name) {
		if _, err := p1.Hold(ctx, epoch, primary); err != nil {
			t.Fatal(err)
		}
		if err := p1.Swap(ctx, epoch, primary); err != nil {
			t.Fatal(err)
		}
		p1.Release(epoch)
	}
	same := func(phase string, write []byte) {
		t.Helper()
		// Until the restarted proxy's client is back and both agree (the
		// reverse flip's proxy takes its peer's numbering once it answers).
		var s1, s2 *zk.Stat
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			_, s1, err = c1.Get(r)
			if err != nil {
				t.Fatalf("%s: read through the first proxy: %v", phase, err)
			}
			var err2 error
			if _, s2, err2 = c2.Get(r); err2 == nil && s2.Version == s1.Version {
				break
			}
		}
		if s2 == nil || s2.Version != s1.Version {
			var v2 int32 = -1
			if s2 != nil {
				v2 = s2.Version
			}
			t.Fatalf("%s: the restarted proxy shows version %d, its peer %d: clients of the two proxies see different numbers for the same znode", phase, v2, s1.Version)
		}
		st, err := c2.Set(r, write, s1.Version)
		if err != nil {
			t.Fatalf("%s: conditional setData through the restarted proxy with the version read through its peer (%d): %v", phase, s1.Version, err)
		}
		if _, s1, err = c1.Get(r); err != nil || s1.Version != st.Version {
			t.Fatalf("%s: the peer's client reads version %d %v after the write acknowledged with %d", phase, s1.Version, err, st.Version)
		}
		waitMirrored(t, p2)
	}

	// 1. Killed inside the forward flip's barrier, restarted on A before
	// the flip is done, then swapped by a one-shot flip.
	kill()
	barrier(1, ensemble.Target)
	restart(ensemble.Source, 0)
	if err := p2.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	same("forward flip", []byte("1"))

	// 2. Killed in the next phase; the reverse flip runs while it is
	// down, then A drifts one version from B; it restarts on B (the flip
	// not recorded yet) and catches up with no peer answering at first.
	kill()
	barrier(2, ensemble.Source)
	if _, err := ca.Set(r, []byte("1"), -1); err != nil { // same data: nothing to mirror
		t.Fatal(err)
	}
	restart(ensemble.Target, 1)
	if err := p2.Flip(ctx, 2, ensemble.Source); err != nil {
		t.Fatal(err)
	}
	peerUp.Store(true)
	same("reverse flip", []byte("2"))
}

// snapshotDir reads every regular file under dir.
func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// restoreDir makes dir hold exactly the files of saved.
func restoreDir(t *testing.T, dir string, saved map[string][]byte) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	for p, b := range saved {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}
