package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// runEnv runs the binary with extra environment variables.
func runEnv(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

// TestSyncCredentialsOffTheCommandLine: the password --auth takes is in
// argv, readable by anyone on the host (ps, /proc/PID/cmdline). sync and
// validate take it from --auth-file (refused when others may read the
// file) and from ZKM_SYNC_AUTH instead, and warn when --auth is used. The
// credentials must be the ones used: only op:pw may read the znode copied.
func TestSyncCredentialsOffTheCommandLine(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	ctx := context.Background()
	a, b := startPair(t, ctx, "authfile")
	op, err := zkclient.Dial(ctx, a.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("op:pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	if _, err := op.Create(ctx, "/z", nil, zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := op.Create(ctx, "/z/secret", []byte("s"), opOnlyACL(), 0); err != nil {
		t.Fatal(err)
	}
	common := []string{"--source", a.ConnectString(), "--target", b.ConnectString(), "--paths", "/z", "--readers", "1"}
	file := filepath.Join(t.TempDir(), "sync.auth")
	if err := os.WriteFile(file, []byte("# the Mesos identity\ndigest:op:pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const warning = "--auth puts the password on the command line"

	out, code := run(t, append([]string{"sync", "--once", "--metrics-addr", "", "--auth-file", file}, common...)...)
	if code != 2 || !strings.Contains(out, "readable by others") || !strings.Contains(out, "chmod 600 "+file) {
		t.Fatalf("sync with an --auth-file others may read: exit %d, want 2 and the fix\n%s", code, out)
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, append([]string{"sync", "--once", "--metrics-addr", "", "--auth-file", file}, common...)...)
	if code != 0 || !strings.Contains(out, "/z: equal (2 znodes") || strings.Contains(out, warning) || strings.Contains(out, "pw") {
		t.Fatalf("sync --auth-file: exit %d\n%s", code, out)
	}
	bc, err := zkclient.Dial(ctx, b.Addrs(), zkclient.Options{Auth: []zkclient.Auth{{Scheme: "digest", Secret: []byte("op:pw")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	if data, _, err := bc.Get(ctx, "/z/secret"); err != nil || string(data) != "s" {
		t.Fatalf("/z/secret on B: %q, %v", data, err)
	}

	out, code = runEnv(t, []string{"ZKM_SYNC_AUTH=digest:op:pw"}, append([]string{"validate"}, common...)...)
	if code != 0 || !strings.Contains(out, "/z: equal") || strings.Contains(out, warning) {
		t.Fatalf("validate with ZKM_SYNC_AUTH: exit %d\n%s", code, out)
	}
	if out, code = run(t, append([]string{"validate"}, common...)...); code != exitUnverifiable {
		t.Fatalf("validate without credentials: exit %d, want %d (the test's premise)\n%s", code, exitUnverifiable, out)
	}
	out, code = run(t, append([]string{"validate", "--auth", "digest:op:pw"}, common...)...)
	if code != 0 || !strings.Contains(out, warning) || !strings.Contains(out, "--auth-file") {
		t.Fatalf("validate --auth: exit %d, want 0 and a warning naming --auth-file\n%s", code, out)
	}
}
