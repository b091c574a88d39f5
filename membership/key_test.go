package membership

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGossipNeedsTheKey: real memberlist agents on loopback. Two members
// with the shared key form a pool; an agent without a key, or with another
// key, cannot join it and never appears among its members.
func TestGossipNeedsTheKey(t *testing.T) {
	key := make([]byte, 32)
	other := make([]byte, 32)
	_, _ = rand.Read(key)
	_, _ = rand.Read(other)
	seed, err := Join(Config{Name: "control-c1", BindAddr: freeAddr(t), Fast: true, SecretKey: key, Meta: Meta{Role: RoleControl}})
	if err != nil {
		t.Fatal(err)
	}
	defer seed.Leave()
	seedAddr := seed.ml.LocalNode().Address()
	good, err := Join(Config{Name: "proxy-good", BindAddr: freeAddr(t), Fast: true, SecretKey: key, Seeds: []string{seedAddr}, Meta: Meta{Role: RoleProxy}})
	if err != nil {
		t.Fatalf("member with the key: %v", err)
	}
	defer good.Leave()
	for name, k := range map[string][]byte{"proxy-keyless": nil, "proxy-wrongkey": other} {
		a, err := Join(Config{Name: name, BindAddr: freeAddr(t), Fast: true, SecretKey: k, Seeds: []string{seedAddr}, Meta: Meta{Role: RoleProxy}})
		if err == nil {
			defer a.Leave()
			t.Errorf("%s joined the keyed pool", name)
		}
	}
	// Give gossip time to spread anything that did get in.
	time.Sleep(500 * time.Millisecond)
	f := &Fleet{Agent: seed}
	live, _ := f.Live(t.Context())
	if len(live) != 1 || live[0] != "proxy-good" {
		t.Fatalf("live proxies in the pool: %v (want only proxy-good)", live)
	}
}

func TestLoadKeyRefusesWhatItCannotUse(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := base64.StdEncoding.EncodeToString(make([]byte, 32))
	if k, err := LoadKey(write("good", good+"\n", 0o600)); err != nil || len(k) != 32 {
		t.Fatalf("good key: %v", err)
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"open":   {good, 0o644, "chmod 600"},
		"short":  {base64.StdEncoding.EncodeToString(make([]byte, 10)), 0o600, "want 16, 24 or 32"},
		"garble": {"not base64!", 0o600, "not base64"},
	} {
		_, err := LoadKey(write(name, c.content, c.mode))
		if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (want %q)", name, err, c.want)
		}
	}
}
