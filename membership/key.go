package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrKey is a gossip key file that cannot be used.
var ErrKey = errors.New("membership: gossip key")

// KeyHint says how to make a key file.
const KeyHint = "create one with: head -c 32 /dev/urandom | base64 > gossip.key && chmod 600 gossip.key, and give every control node, proxy and replicator the same file"

// LoadKey reads a gossip key file: the base64 encoding of 16, 24 or 32
// random bytes (AES-128, -192 or -256), as `consul keygen` prints it. The
// file must not be readable by group or others.
func LoadKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w (%s)", ErrKey, err, KeyHint)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is readable by others (mode %v): chmod 600 %s", ErrKey, path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64: %v (%s)", ErrKey, path, err, KeyHint)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("%w: %s holds %d bytes, want 16, 24 or 32 (%s)", ErrKey, path, len(key), KeyHint)
}
