package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
)

// The tests in this file drive the real clients a Mesos cluster and its
// operators use (the C library, the C and Java CLIs, kazoo) through the
// proxy against the real ensemble.

const (
	zkCliPath = "/usr/share/zookeeper/bin/zkCli.sh"
	cliMTPath = "/usr/lib/zookeeper/bin/cli_mt"
	python    = "/usr/bin/python3" // Debian's, where python3-kazoo is installed
)

func requireFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s missing (install Debian package %s, or run make deps): %v", path, pkg, err)
	}
}

// interactive runs a client that prints "READY 0x<session> ..." once set up,
// then waits for a line on stdin. readyLine returns that line's fields.
type interactive struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	exitErr error
	stdin   io.WriteCloser
	lines   chan string
	mu      sync.Mutex
	output  strings.Builder
}

func startInteractive(t *testing.T, name string, args ...string) *interactive {
	t.Helper()
	cmd := exec.Command(name, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ic := &interactive{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			ic.mu.Lock()
			ic.output.WriteString(sc.Text() + "\n")
			ic.mu.Unlock()
			select {
			case ic.lines <- sc.Text():
			default:
			}
		}
		close(ic.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = pw.Close()
	})
	go func() {
		ic.exitErr = cmd.Wait()
		_ = pw.Close()
		close(ic.exited)
	}()
	return ic
}

// waitLine returns the first output line starting with prefix.
func (ic *interactive) waitLine(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-ic.lines:
			if !ok {
				t.Fatalf("client exited before printing %q; output:\n%s", prefix, ic.out())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %q within %v; output:\n%s", prefix, d, ic.out())
		}
	}
}

func (ic *interactive) out() string {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.output.String()
}

func parseSession(t *testing.T, hex string) int64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimPrefix(hex, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("session id %q: %v", hex, err)
	}
	return int64(v)
}

// survivalCheck runs a client that sets itself up, then kills the upstream
// server its session is on, changes the watched node directly, and lets the
// client verify it kept its session, ephemeral and watch.
func survivalCheck(t *testing.T, p *proxytest.Proxy, ic *interactive, change func()) {
	t.Helper()
	ready := strings.Fields(ic.waitLine(t, "READY", 60*time.Second))
	killUpstreamOf(t, p, parseSession(t, ready[1]))
	change()
	if _, err := io.WriteString(ic.stdin, "CHECK\n"); err != nil {
		t.Fatal(err)
	}
	result := ic.waitLine(t, "RESULT", 60*time.Second)
	if err := ic.waitExit(30 * time.Second); err != nil {
		t.Fatalf("client failed after its upstream server died: %v\n%s\noutput:\n%s", err, result, ic.out())
	}
	t.Log(result)
}

// waitExit waits for the client to end and returns its exit error.
func (ic *interactive) waitExit(d time.Duration) error {
	select {
	case <-ic.exited:
		return ic.exitErr
	case <-time.After(d):
		return fmt.Errorf("still running after %v", d)
	}
}

// TestCClientMesosContenderSurvivesUpstreamDeath compiles a program against
// libzookeeper_mt, the library Mesos uses, that contends like a Mesos master
// (digest auth, ephemeral sequential json.info_ with
// EVERYONE_READ_CREATOR_ALL, child watch, multi), and checks that it keeps
// its session, node and watch while the proxy moves it to another server.
func TestCClientMesosContenderSurvivesUpstreamDeath(t *testing.T) {
	requireFile(t, "/usr/include/zookeeper/zookeeper.h", "libzookeeper-mt-dev")
	bin := filepath.Join(t.TempDir(), "mesos_like")
	if out, err := exec.Command("gcc", "-O1", "-Wall", "-Werror", "-o", bin, "testdata/mesos_like.c", "-lzookeeper_mt", "-lpthread").CombinedOutput(); err != nil {
		t.Fatalf("compile C client: %v\n%s", err, out)
	}
	root := testRoot(t)
	p := startProxy(t)
	direct := directConn(t)
	ic := startInteractive(t, bin, p.Addr, root)
	survivalCheck(t, p, ic, func() {
		retryWrite(t, "create sibling", func() error {
			_, err := direct.Create(root+"/agent-sees-this", nil, 0, zk.WorldACL(zk.PermAll))
			if err == zk.ErrNodeExists {
				return nil
			}
			return err
		})
	})
	// The client closed its session: its ephemeral must be gone.
	kids, _, err := direct.Children(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			t.Fatalf("ephemeral %s outlived its closed session", k)
		}
	}
}

func TestKazooSurvivesUpstreamDeath(t *testing.T) {
	requireFile(t, "/usr/lib/python3/dist-packages/kazoo/client.py", "python3-kazoo")
	root := testRoot(t)
	p := startProxy(t)
	direct := directConn(t)
	ic := startInteractive(t, python, "testdata/kazoo_client.py", p.Addr, root)
	survivalCheck(t, p, ic, func() {
		retryWrite(t, "set watched node", func() error {
			_, err := direct.Set(root+"/data", []byte("changed"), -1)
			return err
		})
	})
}

// TestZkCliPersistentRecursiveWatchSurvivesUpstreamDeath uses ZooKeeper's
// Java CLI: a persistent recursive watch (3.6+ addWatch) must be carried to
// the new server (SetWatches2) and keep firing, and digest ACLs must work.
func TestZkCliPersistentRecursiveWatchSurvivesUpstreamDeath(t *testing.T) {
	requireFile(t, zkCliPath, "zookeeper")
	root := testRoot(t)
	p := startProxy(t)
	direct := directConn(t)
	ic := startInteractive(t, zkCliPath, "-server", p.Addr)
	send := func(cmds ...string) {
		for _, c := range cmds {
			if _, err := io.WriteString(ic.stdin, c+"\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	send("addauth digest cli:pw",
		"create "+root+"/z data",
		"create "+root+"/z/secret s auth::cdrwa",
		"create -e -s "+root+"/z/eph- x",
		"addWatch -m PERSISTENT_RECURSIVE "+root+"/z",
		"getAcl "+root+"/z/secret",
		"stat "+root+"/z")
	ic.waitLine(t, "numChildren = 2", 60*time.Second)
	if !strings.Contains(ic.out(), "'digest,'cli:") {
		t.Fatalf("getAcl through the proxy did not show the digest ACL:\n%s", ic.out())
	}
	ids := p.SessionIDs()
	if len(ids) != 1 {
		t.Fatalf("proxy has %d sessions, want zkCli's one", len(ids))
	}
	// The change races the move on purpose: ZooKeeper re-registers
	// persistent watches without catching up, so the proxy's catch-up must
	// report it.
	killUpstreamOf(t, p, ids[0])
	retryWrite(t, "create under watched tree", func() error {
		_, err := direct.Create(root+"/z/new", nil, 0, zk.WorldACL(zk.PermAll))
		if err == zk.ErrNodeExists {
			return nil
		}
		return err
	})
	ic.waitLine(t, "WatchedEvent state:SyncConnected type:NodeCreated path:"+root+"/z/new", 30*time.Second)
	if _, err := direct.Set(root+"/z/new", []byte("x"), -1); err != nil {
		t.Fatal(err)
	}
	ic.waitLine(t, "WatchedEvent state:SyncConnected type:NodeDataChanged path:"+root+"/z/new", 30*time.Second)
	send("ls "+root+"/z", "quit")
	if err := ic.waitExit(30 * time.Second); err != nil {
		t.Fatalf("zkCli: %v\n%s", err, ic.out())
	}
	out := ic.out()
	for _, bad := range []string{"state:Disconnected", "state:Expired", "Session expired", "KeeperErrorCode"} {
		if strings.Contains(out, bad) {
			t.Fatalf("zkCli saw %q through the proxy:\n%s", bad, out)
		}
	}
	if !strings.Contains(out, "eph-0000000") {
		t.Fatalf("zkCli's ephemeral not listed after the move:\n%s", out)
	}
}

// TestCCliBasicsThroughProxy runs the C client CLI's batch mode.
func TestCCliBasicsThroughProxy(t *testing.T) {
	requireFile(t, cliMTPath, "zookeeper-bin")
	root := testRoot(t)
	p := startProxy(t)
	run := func(c string) string {
		t.Helper()
		out, _ := exec.Command(cliMTPath, "-h", p.Addr, "-c", c).CombinedOutput()
		return string(out)
	}
	for _, step := range []struct{ cmd, want string }{
		{"create " + root + "/c", "rc = 0"},
		{"create +es " + root + "/c/e-", "rc = 0"},
		{"set " + root + "/c hello", "rc = 0"},
		{"get " + root + "/c", "value_len = 5"},
		{"ls " + root + "/c", "rc = 0"},
		{"delete " + root + "/c", "rc = 0"},
	} {
		if out := run(step.cmd); !strings.Contains(out, step.want) {
			t.Fatalf("cli_mt %q: want %q in:\n%s", step.cmd, step.want, out)
		}
	}
	direct := directConn(t)
	if ok, _, _ := direct.Exists(root + "/c"); ok {
		t.Fatal("delete through cli_mt did not reach the ensemble")
	}
}

// TestCloseSessionIsAnsweredBeforeTheConnectionCloses: the proxy must
// relay the server's reply to a closeSession before it closes the client's
// connection, as a ZooKeeper server does. The Java client takes an end of
// stream before that reply for a lost connection (zkCli printed
// state:Disconnected at quit, TestZkCliPersistentRecursiveWatchSurvivesUpstreamDeath
// under load): the relay closed the client connection as soon as the
// server hung up, while the reply still waited in the client's write
// queue. 100 sessions close at once, as directly against the ensemble.
func TestCloseSessionIsAnsweredBeforeTheConnectionCloses(t *testing.T) {
	p := startProxy(t)
	for name, addr := range map[string]string{"directly": ens.Addrs()[0], "through the proxy": p.Addr} {
		const n = 100
		var wg sync.WaitGroup
		var missing atomic.Int32
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close()
				fr := jute.NewFrameReader(bufioReader(conn), 1<<20)
				cr := jute.ConnectRequest{TimeOut: 10000, Passwd: make([]byte, 16)}
				if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&cr))); err != nil {
					errs <- err
					return
				}
				if _, err := fr.Next(); err != nil {
					errs <- fmt.Errorf("handshake: %w", err)
					return
				}
				var e jute.Encoder
				(&jute.RequestHeader{Xid: 1, Type: int32(jute.OpCloseSession)}).Encode(&e)
				if _, err := conn.Write(jute.AppendFrame(nil, e.Bytes())); err != nil {
					errs <- err
					return
				}
				frame, err := fr.Next()
				if err != nil {
					missing.Add(1) // the connection ended before the reply
					return
				}
				var h jute.ReplyHeader
				if err := h.Decode(jute.NewDecoder(frame)); err != nil || h.Xid != 1 || h.Err != 0 {
					errs <- fmt.Errorf("closeSession reply %+v, %v", h, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", name, err)
		}
		if m := missing.Load(); m > 0 {
			t.Errorf("%s: %d of %d closeSessions got no reply before the connection closed", name, m, n)
		}
	}
}
