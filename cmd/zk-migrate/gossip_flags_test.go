package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestGossipWithoutAKeyIsAUsageError: --gossip-addr without
// --gossip-key-file is refused (exit 2, with how to make a key and the
// --gossip-insecure escape hatch) by control, proxy and sync, before
// anything joins a pool: roles in the pool are self-asserted, so a clear
// pool lets a stranger pose as a control node and move proxies' primary.
func TestGossipWithoutAKeyIsAUsageError(t *testing.T) {
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	for _, args := range [][]string{
		{"control", "--id", "c1", "--raft-addr", freeAddr(t), "--api-addr", freeAddr(t), "--data-dir", filepath.Join(dir, "c1"),
			"--tokens", tokens, "--bootstrap", "--gossip-addr", freeAddr(t)},
		{"proxy", "--listen", freeAddr(t), "--upstream", "127.0.0.1:1", "--metrics-addr", "", "--gossip-addr", freeAddr(t)},
		{"sync", "--source", "127.0.0.1:1", "--target", "127.0.0.1:2", "--paths", "/a", "--metrics-addr", "", "--gossip-addr", freeAddr(t)},
	} {
		out, code := run(t, args...)
		if code != exitUsage || !strings.Contains(out, "--gossip-addr needs --gossip-key-file") || !strings.Contains(out, "--gossip-insecure") ||
			!strings.Contains(out, "head -c 32 /dev/urandom") {
			t.Errorf("%s with --gossip-addr and no key: exit %d, want %d with the fix:\n%s", args[0], code, exitUsage, out)
		}
	}
}
