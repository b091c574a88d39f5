package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// process is a zk-migrate binary started by a test, killed when it ends.
type process struct {
	cmd     *exec.Cmd
	metrics string // host:port of its /metrics
	logs    *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test
// reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// buildBinary builds cmd/zk-migrate into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "zk-migrate")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/zk-migrate/zk-migrate/cmd/zk-migrate").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// start runs bin with args, its /metrics on metrics; the test's cleanup
// kills it.
func start(t *testing.T, bin, metrics string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, args...), metrics: metrics, logs: &syncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		if t.Failed() {
			t.Logf("%s %v output:\n%s", filepath.Base(bin), args[0], p.logs.String())
		}
	})
	waitFor(t, 20*time.Second, p.metrics+" serving /metrics", func() bool {
		resp, err := http.Get("http://" + p.metrics + "/metrics")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// scrape returns the metric families p exports now (name -> type).
func (p *process) scrape() (map[string]string, error) {
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", p.metrics, err)
	}
	defer resp.Body.Close()
	return families(resp.Body)
}

// startPair starts ensembles A (three servers, so that it can lose its
// quorum) and B (one server) side by side.
func startPair(t *testing.T) (a, b *zktest.Ensemble) {
	t.Helper()
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() {
		defer wg.Done()
		a, errA = zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "deploy-a"})
	}()
	go func() {
		defer wg.Done()
		b, errB = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "deploy-b"})
	}()
	wg.Wait()
	for _, e := range []*zktest.Ensemble{a, b} {
		if e != nil {
			t.Cleanup(e.Close)
		}
	}
	if errA != nil || errB != nil {
		t.Fatalf("start ensembles: A %v, B %v", errA, errB)
	}
	return a, b
}

// connect opens a session with the given timeout, closed when the test ends.
func connect(t *testing.T, addrs []string, timeout time.Duration) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect(addrs, timeout, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// traffic runs a mix of ZooKeeper requests through each address (creates,
// reads, watches, writes, deletes, and reads of missing znodes, which
// answer NONODE) until stop is called. Sessions time out after 2 s, so
// that losing ZooKeeper shows in the proxies' metrics within seconds.
func traffic(t *testing.T, root string, addrs ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var conns []*zk.Conn
	for i, addr := range addrs {
		c, _, err := zk.Connect([]string{addr}, 2*time.Second, zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := fmt.Sprintf("%s/load-%d", root, i)
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = c.Create(p, []byte("x"), 0, zk.WorldACL(zk.PermAll))
				_, _, _, _ = c.GetW(p)
				_, _ = c.Set(p, []byte(fmt.Sprint(n)), -1)
				_, _, _ = c.Get(p + "-missing")
				_, _, _ = c.Children(root)
				_ = c.Delete(p, -1)
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	// Closing the sessions ends requests waiting for a server that no
	// longer comes (after the quorum loss).
	return func() {
		cancel()
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}
}

// badFrame sends the proxy at addr a frame longer than jute.maxbuffer, as
// a broken client would; the proxy closes that connection.
func badFrame(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{0x7f, 0xff, 0xff, 0xff})
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.Read(make([]byte, 1))
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := zktest.StableAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// waitFor polls f every 100 ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); ; {
		if f() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tempFile writes content to name in a temporary directory.
func tempFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
