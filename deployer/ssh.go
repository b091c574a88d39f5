package deployer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SSH runs commands on a host with the OpenSSH client, so the control
// node's user's ~/.ssh/config, agent, known_hosts and ProxyJump apply as
// they do for that user at a terminal. Every command runs with
// BatchMode=yes (a password or host-key prompt is an error, never a hang)
// and a ConnectTimeout.
type SSH struct {
	// Command is the ssh client (default "ssh").
	Command string
	// User (-l), Port (-p), IdentityFile (-i, with IdentitiesOnly=yes)
	// and ConfigFile (-F) are left to ssh's configuration when empty.
	User         string
	Port         int
	IdentityFile string
	ConfigFile   string
	// Options are extra -o Key=Value options (StrictHostKeyChecking=yes,
	// UserKnownHostsFile=..., ProxyJump=bastion, ControlMaster=auto ...).
	// BatchMode and ConnectTimeout come first, so they win (ssh keeps the
	// first value it reads).
	Options []string
	// ConnectTimeout bounds the connection (default 10 s).
	ConnectTimeout time.Duration
}

// args is ssh's command line up to and including the destination.
func (s *SSH) args(host string) []string {
	ct := s.ConnectTimeout
	if ct <= 0 {
		ct = 10 * time.Second
	}
	secs := int((ct + time.Second - 1) / time.Second)
	a := []string{"-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=" + strconv.Itoa(secs)}
	if s.ConfigFile != "" {
		a = append(a, "-F", s.ConfigFile)
	}
	if s.User != "" {
		a = append(a, "-l", s.User)
	}
	if s.Port != 0 {
		a = append(a, "-p", strconv.Itoa(s.Port))
	}
	if s.IdentityFile != "" {
		a = append(a, "-i", s.IdentityFile, "-o", "IdentitiesOnly=yes")
	}
	for _, o := range s.Options {
		a = append(a, "-o", o)
	}
	return append(a, "--", host)
}

func (s *SSH) command() string {
	if s.Command == "" {
		return "ssh"
	}
	return s.Command
}

// CommandLine is the local command line that runs remote on host, quoted
// for a shell (what an operator pastes to reproduce a failure).
func (s *SSH) CommandLine(host string, remote ...string) string {
	return shellJoin(append(append([]string{s.command()}, s.args(host)...), shellJoin(remote)))
}

// Run runs remote (a command and its arguments, each quoted for the
// remote shell) on host and returns its standard output. A failure is a
// *RemoteError.
func (s *SSH) Run(ctx context.Context, host string, remote ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.command(), append(s.args(host), shellJoin(remote))...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second // a remote child holding the pipes open does not hold us
	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	e := &RemoteError{Host: host, Remote: shellJoin(remote), Status: -1,
		Stdout: stdout.String(), Stderr: strings.TrimSpace(stderr.String()), Err: err}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		e.Err = ctx.Err()
		e.Hint = "it did not return in time"
	case errors.As(err, &exit):
		e.Status = exit.ExitCode()
		if e.Status == 255 {
			e.Hint = s.sshHint(host, e.Stderr)
		}
	default: // ssh did not start
		e.Hint = fmt.Sprintf("the OpenSSH client %q must be installed on this control node (apt-get install openssh-client), "+
			"or set mesos.deployer.ssh to its path", s.command())
	}
	return e.Stdout, e
}

// sshHint is the fix for ssh's own failure (exit status 255).
func (s *SSH) sshHint(host, stderr string) string {
	check := fmt.Sprintf("`%s` must work from this control node, as its user, without a prompt", s.CommandLine(host, "true"))
	switch {
	case strings.Contains(stderr, "Permission denied"):
		return "the host refused the key: " + host + "'s authorized_keys (of the ssh user) must hold the public key of " +
			"mesos.deployer.ssh_identity_file or of a key in this user's ssh agent; " + check
	case strings.Contains(stderr, "Host key verification failed"), strings.Contains(stderr, "host key is known"),
		strings.Contains(stderr, "HOST IDENTIFICATION HAS CHANGED"):
		return "the host's key is not in known_hosts (or changed): add it, e.g. ssh-keyscan " + host +
			" >> ~/.ssh/known_hosts after checking its fingerprint; " + check
	case strings.Contains(stderr, "Connection refused"), strings.Contains(stderr, "timed out"),
		strings.Contains(stderr, "No route to host"), strings.Contains(stderr, "Could not resolve"),
		strings.Contains(stderr, "Network is unreachable"):
		return "the host's ssh server is not reachable: check the address, mesos.deployer.ssh_port and firewalls; " + check
	}
	return check
}

// RemoteError is a remote command that failed: where, what, its exit
// status and standard error, and what to do about it.
type RemoteError struct {
	Host string
	// Remote is the command run on Host.
	Remote string
	// Status is its exit status (ssh's own failures are 255); -1 when it
	// did not run to its end (ssh not found, a timeout).
	Status         int
	Stdout, Stderr string
	// Hint says how to fix it.
	Hint string
	// Err is the underlying error.
	Err error
}

func (e *RemoteError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "on %s, `%s`", e.Host, e.Remote)
	switch {
	case e.Status == 255:
		b.WriteString(": ssh failed (exit status 255)")
	case e.Status >= 0:
		fmt.Fprintf(&b, ": exit status %d", e.Status)
	default:
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Stderr != "" {
		b.WriteString(": " + oneLine(e.Stderr))
	}
	if e.Hint != "" {
		b.WriteString(" (fix: " + e.Hint + ")")
	}
	return b.String()
}

func (e *RemoteError) Unwrap() error { return e.Err }

// oneLine joins lines with " | " and bounds the length.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ")), " ")
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return s
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9@%+=:,./_-]+$`)

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if plainWord.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}
