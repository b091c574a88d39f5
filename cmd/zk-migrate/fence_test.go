package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/fence"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// fenceProxy is a `zk-migrate proxy` process of the fencing test.
type fenceProxy struct {
	name, listen, admin string
	cmd                 *exec.Cmd
	logs                *syncBuffer
}

func startFenceProxy(t *testing.T, name string, a, b *zktest.Ensemble, tokenFile, seed, lease string) *fenceProxy {
	t.Helper()
	p := &fenceProxy{name: name, listen: freeAddr(t), admin: freeAddr(t), logs: &syncBuffer{}}
	p.cmd = exec.Command(bin, "proxy", "--listen", p.listen, "--source", a.ConnectString(), "--target", b.ConnectString(),
		"--admin-addr", p.admin, "--admin-token-file", tokenFile, "--metrics-addr", "", "--name", name,
		"--fence-lease", lease, "--gossip-addr", freeAddr(t), "--gossip-join", seed, "--gossip-insecure")
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.logs.String())
		}
	})
	waitFor(t, func() bool {
		out, err := zktest.FourLetterWord(p.listen, "ruok", time.Second)
		return err == nil && out == "imok"
	})
	return p
}

// waitStopped waits until every thread of the process is stopped (state
// T in /proc/<pid>/task/*/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, func() bool {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			return false
		}
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				return false
			}
			// pid (comm) state ...: the state follows the last ')'.
			i := strings.LastIndexByte(string(b), ')')
			if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				return false
			}
		}
		return true
	})
}

// rawSession opens a session through addr with a raw jute connection, so
// the test can put a request in the socket while the proxy is stopped.
func rawSession(t *testing.T, addr string, timeout time.Duration) (net.Conn, *jute.FrameReader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := jute.ConnectRequest{TimeOut: int32(timeout.Milliseconds()), Passwd: make([]byte, 16)}
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&req))); err != nil {
		t.Fatal(err)
	}
	fr := jute.NewFrameReader(bufio.NewReader(conn), 1<<20)
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	return conn, fr
}

// TestStaleProxyIsFenced: two proxy processes; the second is SIGSTOPped
// during a flip barrier, so it never holds nor swaps. While it is stopped
// its client's setData is already in its socket; the barrier holds the
// first proxy, raises the fences and swaps it to B, and its client writes
// B. SIGCONT: the stale proxy's lease (30 s) has not run out, so it sends
// the write to A, where the fence check fails inside ZooKeeper: the client
// sees its connection closed (ConnectionLoss), never a reply, and A never
// has the stale value, nor does B (the stale proxy's mirror is fenced
// too). The stale proxy then finds the new epoch in the fence and moves
// to B by itself: well within its advertised lease its reads show B's
// value and it advertises the new epoch. Without the fence the write
// landed on A.
func TestStaleProxyIsFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles")
	}
	ctx := context.Background()
	a, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "fence-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "fence-b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	tokenFile := filepath.Join(t.TempDir(), "flip.token")
	const token = "0123456789abcdef-fence-token"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl, err := membership.Join(membership.Config{Name: "control-test", BindAddr: freeAddr(t), Fast: true,
		Meta: membership.Meta{Role: membership.RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Leave()
	seed := ctl.Members()[0].Addr
	p1 := startFenceProxy(t, "proxy-1", a, b, tokenFile, seed, "5s")
	const lease = 30 * time.Second
	p2 := startFenceProxy(t, "proxy-2", a, b, tokenFile, seed, lease.String())
	fleet := &membership.Fleet{Agent: ctl, Token: token, Client: &http.Client{Timeout: 10 * time.Second}}
	waitFor(t, func() bool { live, _ := fleet.Live(ctx); return len(live) == 2 })
	for _, m := range ctl.Members() {
		if m.Name == "proxy-2" && m.Meta.LeaseMS != lease.Milliseconds() {
			t.Fatalf("proxy-2 advertises a read lease of %d ms, want %d", m.Meta.LeaseMS, lease.Milliseconds())
		}
	}

	c1, _, err := zk.Connect([]string{p1.listen}, 6*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := c1.Create("/x", []byte("before"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	c2, _, err := zk.Connect([]string{p2.listen}, 20*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if data, _, err := c2.Get("/x"); err != nil || string(data) != "before" {
		t.Fatalf("read through proxy-2: %q %v", data, err)
	}
	raw, fr := rawSession(t, p2.listen, 20*time.Second)
	ca, _, err := zk.Connect(a.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	waitFor(t, func() bool { d, _, _ := cb.Get("/x"); return string(d) == "before" }) // mirrored

	// proxy-2 stops, with its client's write already in its socket.
	if err := p2.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, p2.cmd.Process.Pid) // a signal is delivered asynchronously
	var e jute.Encoder
	(&jute.RequestHeader{Xid: 1, Type: int32(jute.OpSetData)}).Encode(&e)
	(&jute.SetDataRequest{Path: "/x", Data: []byte("stale"), Version: -1}).Encode(&e)
	if _, err := raw.Write(jute.AppendFrame(nil, e.Bytes())); err != nil {
		t.Fatal(err)
	}

	// The barrier, as the executor runs it (control/barrier.go).
	const epoch = 1
	proxies := []string{"proxy-1", "proxy-2"}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	held, budget, _, _ := fleet.Hold(hctx, "m", epoch, ensemble.Target, proxies)
	cancel()
	if !slices.Equal(held, []string{"proxy-1"}) || budget <= 0 {
		t.Fatalf("held %v (budget %v), want proxy-1 only", held, budget)
	}
	for _, ens := range []*zktest.Ensemble{a, b} {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		zc, err := zkclient.Dial(fctx, ens.Addrs(), zkclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fence.Raise(fctx, zc, fence.Path, epoch, ensemble.Target); err != nil {
			t.Fatal(err)
		}
		zc.Close()
		cancel()
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	swapped, _ := fleet.Swap(sctx, "m", epoch, ensemble.Target, []string{"proxy-1"})
	cancel()
	fleet.Release(ctx, "m", epoch, proxies)
	if !slices.Equal(swapped, []string{"proxy-1"}) {
		t.Fatalf("swapped %v, want proxy-1", swapped)
	}
	if _, err := c1.Set("/x", []byte("new"), -1); err != nil {
		t.Fatalf("write through the flipped proxy: %v", err)
	}
	if d, _, err := cb.Get("/x"); err != nil || string(d) != "new" {
		t.Fatalf("B after the flip: %q %v", d, err)
	}

	// proxy-2 wakes up: its client's write must fail with ConnectionLoss.
	resumed := time.Now()
	if err := p2.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		frame, err := fr.Next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the stale proxy neither answered nor closed the connection of a fenced write")
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("reading the reply to the stale write: %v", err)
			}
			break // connection closed: ConnectionLoss
		}
		var h jute.ReplyHeader
		_ = h.Decode(jute.NewDecoder(frame))
		if h.Xid == 1 {
			t.Fatalf("the stale proxy answered the write (error %d), want its connection closed (ConnectionLoss)", h.Err)
		}
	}
	for _, side := range []struct {
		name string
		c    *zk.Conn
	}{{"A", ca}, {"B", cb}} {
		_, _ = side.c.Sync("/x")
		if d, _, err := side.c.Get("/x"); err != nil || string(d) == "stale" {
			t.Fatalf("%s holds %q (%v): a write through the stale proxy landed after the flip", side.name, d, err)
		}
	}
	// It moves to B by itself, within the lease it advertises.
	deadline := resumed.Add(lease)
	for {
		d, _, err := c2.Get("/x")
		if err == nil && string(d) == "new" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy-2 still serves %q (%v) %v after it resumed, beyond its lease", d, err, lease)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, func() bool {
		for _, m := range ctl.Members() {
			if m.Name == "proxy-2" {
				return m.Meta.Epoch == epoch && m.Meta.Primary == ensemble.Target
			}
		}
		return false
	})
	if d, _, err := ca.Get("/x"); err != nil || string(d) != "new" {
		t.Fatalf("A (now the secondary) holds %q (%v), want B's value mirrored", d, err)
	}
	status, err := http.Get("http://" + p2.admin + "/admin/v1/sessions")
	if err != nil {
		t.Fatal(err)
	}
	defer status.Body.Close()
	var st struct {
		ReadLeaseMS int64 `json:"read_lease_ms"`
	}
	if err := json.NewDecoder(status.Body).Decode(&st); err != nil || st.ReadLeaseMS != lease.Milliseconds() {
		t.Fatalf("admin status read lease %d ms (%v), want %d", st.ReadLeaseMS, err, lease.Milliseconds())
	}
}

// TestControlPlaneFlipsProxiesThroughTheBarrier: a `zk-migrate control`
// node with gossip and the proxy token runs phase 1 and `advance --phase
// flip` over two proxy processes: the two-phase barrier holds both, raises
// the fence on both ensembles, swaps both and releases them; a write
// through each proxy lands on B and both advertise the epoch. `rollback
// --to-phase 1` is the same barrier back to A under the next epoch.
func TestControlPlaneFlipsProxiesThroughTheBarrier(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two ZooKeeper ensembles, a control node and two proxies")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "barrier")
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(opToken+" operator bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "flip.token")
	if err := os.WriteFile(tokenFile, []byte("0123456789abcdef-barrier-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "migration.yaml")
	if err := os.WriteFile(cfg, []byte("migration:\n  id: prod\n  source_zk: "+a.ConnectString()+"\n  target_zk: "+b.ConnectString()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	api, gossip := freeAddr(t), freeAddr(t)
	ctl := exec.Command(bin, "control", "--id", "c1", "--raft-addr", freeAddr(t), "--api-addr", api, "--bootstrap",
		"--data-dir", filepath.Join(dir, "c1"), "--tokens", tokens, "--raft-stabilization", "500ms",
		"--gossip-addr", gossip, "--gossip-insecure", "--proxy-token-file", tokenFile)
	ctlLog := &syncBuffer{}
	ctl.Stdout, ctl.Stderr = ctlLog, ctlLog
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ctl.Process.Kill()
		_ = ctl.Wait()
		if t.Failed() {
			t.Logf("control log:\n%s", ctlLog.String())
		}
	})
	cli := func(args ...string) string {
		t.Helper()
		out, code := run(t, append(args, "--api", "http://"+api, "--token", opToken)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
		return out
	}
	waitFor(t, func() bool {
		out, code := run(t, "status", "--api", "http://"+api, "--token", opToken)
		return code == 0 && strings.Contains(out, "MIGRATION")
	})
	waitFor(t, func() bool { // the control node joins the pool after its API is up
		c, err := net.DialTimeout("tcp", gossip, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	proxies := []*fenceProxy{
		startFenceProxy(t, "proxy-1", a, b, tokenFile, gossip, "5s"),
		startFenceProxy(t, "proxy-2", a, b, tokenFile, gossip, "5s"),
	}
	var clients []*zk.Conn
	for _, p := range proxies {
		c, _, err := zk.Connect([]string{p.listen}, 6*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	status := func(step, st string) bool {
		for _, line := range strings.Split(cli("status"), "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[0] == "prod" && f[2] == step && f[3] == st {
				return true
			}
		}
		return false
	}
	waitLong := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s\n%s", what, cli("status"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	advertised := func(epoch int64, primary ensemble.Name) bool {
		n := 0
		for _, m := range membersOf(t, gossip) {
			if m.Meta.Role == membership.RoleProxy && m.Meta.Epoch == epoch && m.Meta.Primary == primary {
				n++
			}
		}
		return n == len(proxies)
	}
	fenceOn := func(e *zktest.Ensemble) fence.Record {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		zc, err := zkclient.Dial(fctx, e.Addrs(), zkclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer zc.Close()
		r, err := fence.Read(fctx, zc, fence.Path)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	cli("start", "--config", cfg)
	waitLong("phase 1 succeeded", func() bool { return status("1-deploy-b-and-sync", "succeeded") })
	cli("advance", "--phase", "flip", "--confirm")
	waitLong("flip succeeded", func() bool { return status("flip", "succeeded") })
	waitLong("both proxies advertise epoch 1 on B", func() bool { return advertised(1, ensemble.Target) })
	for _, e := range []*zktest.Ensemble{a, b} {
		if r := fenceOn(e); r.Epoch != 1 || r.Primary != ensemble.Target {
			t.Fatalf("fence after the flip: %+v", r)
		}
	}
	cb, _, err := zk.Connect(b.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	for i, c := range clients {
		p := fmt.Sprintf("/after-flip-%d", i)
		if _, err := c.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
			t.Fatalf("write through proxy-%d after the flip: %v", i+1, err)
		}
		if ok, _, err := cb.Exists(p); err != nil || !ok {
			t.Fatalf("write through proxy-%d after the flip not on B: %v %v", i+1, ok, err)
		}
	}

	cli("rollback", "--to-phase", "1", "--confirm")
	waitLong("both proxies advertise epoch 2 on A", func() bool { return advertised(2, ensemble.Source) })
	if r := fenceOn(a); r.Epoch != 2 || r.Primary != ensemble.Source {
		t.Fatalf("fence after the rollback: %+v", r)
	}
	for i, c := range clients {
		if _, err := c.Set(fmt.Sprintf("/after-flip-%d", i), []byte("back"), -1); err != nil {
			t.Fatalf("write through proxy-%d after the rollback: %v", i+1, err)
		}
	}
}

// membersOf lists the gossip pool as seen by a short-lived member joining
// seed.
func membersOf(t *testing.T, seed string) []membership.Member {
	t.Helper()
	ag, err := membership.Join(membership.Config{Name: fmt.Sprintf("watcher-%d", time.Now().UnixNano()), BindAddr: freeAddr(t), Fast: true,
		Seeds: []string{seed}, Meta: membership.Meta{Role: membership.RoleReplicator}})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Leave()
	time.Sleep(300 * time.Millisecond)
	return ag.Members()
}
