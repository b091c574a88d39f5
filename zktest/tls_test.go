package zktest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// TestTLSOnlyEnsemble starts a standalone server with only a
// secureClientPort: a client with a certificate from the CA works; a
// plaintext client is refused, and the server logs why.
func TestTLSOnlyEnsemble(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ZooKeeper")
	}
	m, err := MakeTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ens, err := Start(context.Background(), Config{Servers: 1, Name: "tls", TLS: m.Server, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	ctx := context.Background()
	c, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{TLS: m.Client.ClientConfig, SessionTimeout: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create(ctx, "/tls", []byte("x"), zkclient.OpenACL, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{DialTimeout: 2 * time.Second}); err == nil {
		t.Fatal("a plaintext client was served by a TLS-only server")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(ens.Server(1).LogPath())
		if strings.Contains(string(b), "not an SSL/TLS record") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not log the plaintext refusal:\n%s", b)
		}
	}
}
