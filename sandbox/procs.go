package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zk-migrate/zk-migrate/zktest"
)

// procs owns the product processes the migration demo starts itself
// (`zk-migrate proxy` and `zk-migrate control`, the framework): each one's
// output goes to DIR/NAME.log, never to the terminal, and Stop ends them
// all. Mesos masters and agents are not here: the control plane's local
// deployer owns them, as it would on real hosts.
type procs struct {
	dir  string
	mu   sync.Mutex
	list []*proc
}

// proc is one child process and its exit.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
	err    error // the exit, once exited is closed
}

// start runs bin args as NAME, its output in DIR/NAME.log. The child gets
// SIGKILL if the demo itself dies (Pdeathsig), so nothing outlives it.
func (ps *procs) start(name, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(ps.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("sandbox: start %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, cmd: cmd, log: logf, exited: make(chan struct{})}
	go func() { // owned by p: ends when the process exits
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// running reports whether p has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to 10 s, then SIGKILL.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// stopAll stops every process, newest first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(list) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p *proc) {
			defer wg.Done()
			p.stop()
		}(list[i])
	}
	wg.Wait()
}

// tail returns the last lines of NAME.log.
func (ps *procs) tail(name string, n int) string {
	b, _ := os.ReadFile(filepath.Join(ps.dir, name+".log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freeAddr returns a loopback address free now, for a process started
// next, from below the kernel's ephemeral port range (see
// zktest.StablePort): a port found free in that range was once taken by
// another test's outgoing connection before the proxy bound it, and the
// demo failed "address already in use".
func freeAddr() (string, error) {
	addr, err := zktest.StableAddr()
	if err != nil {
		return "", fmt.Errorf("sandbox: no free port: %w", err)
	}
	return addr, nil
}

// waitUntil polls f every 100 ms until it returns true, ctx ends or within
// passes; what says what was awaited.
func waitUntil(ctx context.Context, within time.Duration, what string, f func() bool) error {
	deadline := time.Now().Add(within)
	for !f() {
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox: %s: not within %v", what, within)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox: %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}
