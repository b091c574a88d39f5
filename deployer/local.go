package deployer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Local runs bin/mesos-sim processes on this machine. Each process gets
// Dir/NAME.pid and Dir/NAME.log (and an agent Dir/NAME.work, which keeps
// its agent id across restarts). Processes run in their own session
// (setsid), so they outlive the control node that started them, as
// systemd units do; any control node sharing Dir finds them.
type Local struct {
	// Binary is the mesos-sim executable.
	Binary string
	// Dir holds pid files, logs and agents' work directories.
	Dir string
	// ZK is the zk:// URL every process uses (through the host's proxy in
	// a real migration: zk://127.0.0.1:2181/mesos).
	ZK string
	// Quorum is the masters' --quorum.
	Quorum int
	// MasterArgs and AgentArgs are added to every master's and agent's
	// command line (e.g. --zk_session_timeout=5s).
	MasterArgs, AgentArgs []string
	// StartTimeout bounds the wait for HTTP after a start, StopTimeout the
	// wait for the exit after SIGTERM (defaults 20 s each).
	StartTimeout, StopTimeout time.Duration
}

var _ Deployer = (*Local)(nil)

func (l *Local) path(p Process, ext string) string { return filepath.Join(l.Dir, p.Name+ext) }

func (l *Local) args(p Process) []string {
	host := p.Hostname
	if host == "" {
		host = p.Host
	}
	common := []string{"--ip", p.Host, "--port", strconv.Itoa(p.Port), "--hostname", host}
	if p.Kind == Master {
		return append(append([]string{"master", "--zk", l.ZK, "--quorum", strconv.Itoa(l.Quorum)}, common...), l.MasterArgs...)
	}
	return append(append([]string{"agent", "--master", l.ZK, "--work_dir", l.path(p, ".work")}, common...), l.AgentArgs...)
}

// pid returns the pid of p's process if it runs now (0 otherwise): the
// one its pid file names, else (a start interrupted before it wrote the
// file, a control node killed mid-start) any process on this machine whose
// command line is p's. A process counts only if it is not a zombie and its
// command line is p's (kind and port): a recycled pid is not p.
func (l *Local) pid(p Process) int {
	if b, err := os.ReadFile(l.path(p, ".pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 && l.isProcess(pid, p) {
			return pid
		}
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if pid, err := strconv.Atoi(d.Name()); err == nil && l.isProcess(pid, p) {
			return pid
		}
	}
	return 0
}

// isProcess reports whether pid is a live (not zombie) process of
// Binary's running p: its kind, on its address and port.
func (l *Local) isProcess(pid int, p Process) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(stat), ')'); i < 0 || len(stat) < i+3 || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	flag := func(name string) string {
		if i := slices.Index(args, name); i > 0 && i+1 < len(args) {
			return args[i+1]
		}
		return ""
	}
	return len(args) > 1 && filepath.Base(args[0]) == filepath.Base(l.Binary) && args[1] == string(p.Kind) &&
		flag("--ip") == p.Host && flag("--port") == strconv.Itoa(p.Port)
}

// Running reports whether p's process runs.
func (l *Local) Running(_ context.Context, p Process) (bool, error) { return l.pid(p) != 0, nil }

// Start runs p unless it runs, and waits until it serves HTTP.
func (l *Local) Start(ctx context.Context, p Process) error {
	if l.pid(p) != 0 {
		return nil
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return fmt.Errorf("start %s: %w", p, err)
	}
	if p.Kind == Agent { // keeps the agent id across restarts
		if err := os.MkdirAll(l.path(p, ".work"), 0o755); err != nil {
			return fmt.Errorf("start %s: %w", p, err)
		}
	}
	logf, err := os.OpenFile(l.path(p, ".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p, err)
	}
	defer logf.Close()
	cmd := exec.Command(l.Binary, l.args(p)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w (is deployer.binary %s built? make build)", p, err, l.Binary)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reaps it; ends when it exits
	if err := os.WriteFile(l.path(p, ".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return fmt.Errorf("start %s: %w", p, err)
	}
	timeout := l.StartTimeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		if resp, err := client.Get(p.URL() + "/health"); err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("start %s: it exited: %s", p, l.tail(p))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start %s: no HTTP answer on %s after %v: %s", p, p.URL(), timeout, l.tail(p))
		}
	}
}

// Stop sends SIGTERM to p's process and waits for it to exit.
func (l *Local) Stop(ctx context.Context, p Process) error {
	pid := l.pid(p)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p, pid, err)
	}
	timeout := l.StopTimeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for l.pid(p) != 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("stop %s (pid %d): still running %v after SIGTERM; not killed, since a killed master's znodes "+
				"outlive it until its session expires (find out why it hangs, or kill it and wait out its session): %s", p, pid, timeout, l.tail(p))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// tail is the last lines of p's log.
func (l *Local) tail(p Process) string {
	b, _ := os.ReadFile(l.path(p, ".log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "last log lines: " + strings.Join(lines, " | ")
}

// PID returns the pid of p's running process, or 0.
func (l *Local) PID(p Process) int { return l.pid(p) }

// Describe returns the last lines of p's log.
func (l *Local) Describe(p Process) string { return l.tail(p) }
