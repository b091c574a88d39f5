package mesosim_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// These tests run bin/mesos-sim as separate processes against a real
// three-server ensemble, as a user runs them.

var (
	bin string
	ens *zktest.Ensemble
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() || os.Getenv("ZKM_SKIP_ZK") != "" {
		os.Exit(m.Run())
	}
	if _, err := os.Stat("/usr/include/zookeeper/zookeeper.h"); err != nil {
		fmt.Fprintln(os.Stderr, "libzookeeper-mt-dev is missing (run make deps):", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "mesos-sim-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "mesos-sim")
	if out, err := exec.Command("go", "build", "-race", "-o", bin, "../cmd/mesos-sim").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	ens, err = zktest.Start(context.Background(), zktest.Config{Servers: 3, Name: "mesos"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	ens.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needZK(t *testing.T) {
	if ens == nil {
		t.Skip("needs ZooKeeper (not in -short mode)")
	}
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is one mesos-sim process.
type proc struct {
	name string
	port int
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	code int
}

func freePort(t *testing.T) int {
	t.Helper()
	// Below the ephemeral range: a port from it could be taken by an
	// outgoing connection before the process started later binds it.
	p, err := zktest.StablePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs mesos-sim with args plus --port; it is killed at cleanup and
// its output is logged if the test failed.
func start(t *testing.T, name string, port int, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, port: port, args: args, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append(args, "--port", strconv.Itoa(port))...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.code = -int(ws.Signal())
			}
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGKILL)
		<-p.done
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s: data race:\n%s", p.name, p.out.String())
		} else {
			// The emulator's own JSON lines only: no C client log.
			for _, line := range strings.Split(p.out.String(), "\n") {
				if line != "" && !strings.HasPrefix(line, "{") && !strings.HasPrefix(line, "mesos-sim: ") {
					t.Errorf("%s printed a line that is not its own: %q", p.name, line)
					break
				}
			}
		}
		if t.Failed() {
			t.Logf("---- %s (%v) output:\n%s", p.name, p.args, tail(p.out.String(), 60))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// stop SIGSTOPs the process and waits until every thread of it is stopped
// (state T in /proc/<pid>/task/*/stat): a signal is delivered
// asynchronously, and a request sent meanwhile could still be served.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.signal(syscall.SIGSTOP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", p.cmd.Process.Pid))
		stopped := len(tasks) > 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			i := strings.LastIndexByte(string(b), ')')
			if err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not stopped 10 s after SIGSTOP", p.cmd.Process.Pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits for the process to end and returns its exit code.
func (p *proc) waitExit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("%s still running after %v", p.name, d)
		return 0
	}
}

func (p *proc) url() string { return fmt.Sprintf("http://127.0.0.1:%d", p.port) }

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var noRedirect = &http.Client{
	Timeout:       2 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// call does one HTTP request without following redirects.
func call(method, url string, body any) (int, http.Header, []byte, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return 0, nil, nil, err
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// mustCall fails the test unless the answer has the wanted status code,
// and decodes a JSON body into out.
func mustCall(t *testing.T, want int, method, url string, body, out any) {
	t.Helper()
	code, _, b, err := call(method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if code != want {
		t.Fatalf("%s %s: HTTP %d %s; want %d", method, url, code, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
}

// zkConn is a Go client on the ensemble, to look at what the C clients did.
func zkConn(t *testing.T) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect(ens.Addrs(), 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// masterNodes lists path's json.info_ children, lowest sequence first,
// with the pid in each node's MasterInfo.
func masterNodes(t *testing.T, c *zk.Conn, path string) (nodes, pids []string) {
	t.Helper()
	kids, _, err := c.Children(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kids {
		if strings.HasPrefix(k, "json.info_") {
			nodes = append(nodes, k)
		}
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i][len(nodes[i])-10:] < nodes[j][len(nodes[j])-10:] })
	for _, n := range nodes {
		data, _, err := c.Get(path + "/" + n)
		if err != nil {
			pids = append(pids, "")
			continue
		}
		var info struct {
			PID string `json:"pid"`
		}
		_ = json.Unmarshal(data, &info)
		pids = append(pids, info.PID)
	}
	return nodes, pids
}

// leaders asks every live master for /master/state: the leader answers
// 200, the others 307 to it. It returns the answering leaders' indexes and
// where the others redirect.
func leaders(masters []*proc) (lead []int, redirects map[int]string) {
	redirects = map[int]string{}
	for i, m := range masters {
		if m.exited() {
			continue
		}
		code, h, _, err := call("GET", m.url()+"/master/state", nil)
		switch {
		case err != nil:
		case code == http.StatusOK:
			lead = append(lead, i)
		case code == http.StatusTemporaryRedirect:
			redirects[i] = h.Get("Location")
		}
	}
	return lead, redirects
}

// waitOneLeader waits until exactly one live master leads and every other
// live master redirects to it; it returns the leader's index.
func waitOneLeader(t *testing.T, masters []*proc, d time.Duration) int {
	t.Helper()
	var leader int
	waitFor(t, d, "exactly one leading master, the others redirecting to it", func() bool {
		lead, redirects := leaders(masters)
		if len(lead) != 1 {
			return false
		}
		leader = lead[0]
		live := 0
		for i, m := range masters {
			if !m.exited() && i != leader {
				live++
				if redirects[i] != masters[leader].url()+"/master/state" {
					return false
				}
			}
		}
		return len(redirects) == live
	})
	return leader
}

type v1Tasks struct {
	GetTasks struct {
		Tasks          []v1Task `json:"tasks"`
		CompletedTasks []v1Task `json:"completed_tasks"`
	} `json:"get_tasks"`
}

type v1Task struct {
	TaskID  struct{ Value string } `json:"task_id"`
	AgentID struct{ Value string } `json:"agent_id"`
	State   string                 `json:"state"`
}

type v1Agents struct {
	GetAgents struct {
		Agents []struct {
			AgentInfo struct {
				ID       struct{ Value string } `json:"id"`
				Hostname string                 `json:"hostname"`
			} `json:"agent_info"`
			Active    bool `json:"active"`
			DrainInfo *struct {
				State string `json:"state"`
			} `json:"drain_info"`
		} `json:"agents"`
	} `json:"get_agents"`
}

type fwState struct {
	FrameworkID    string         `json:"framework_id"`
	Leader         string         `json:"leader"`
	Subscribed     bool           `json:"subscribed"`
	Active         map[string]int `json:"active"`
	KilledByUs     int            `json:"killed_by_us"`
	KilledByOthers int            `json:"killed_by_others"`
	Failed         int            `json:"failed"`
}

func frameworkState(t *testing.T, fw *proc) fwState {
	t.Helper()
	var s fwState
	mustCall(t, 200, "GET", fw.url()+"/state", nil, &s)
	return s
}

// history reads the framework's task state changes.
func history(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("history line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func jsonInto(b []byte, out any) error { return json.Unmarshal(b, out) }
