package main

import (
	"os"
	"strings"
)

// loadFlipToken reads the bearer token of the flip barrier from a file only
// its owner may read (flag names the flag, for the message). The control
// plane sends it (--proxy-token-file on `zk-migrate control`); a proxy
// accepts a flip request only with it (--admin-token-file).
func loadFlipToken(flag, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", usageError("--%s: %v", flag, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", usageError("--%s %s is readable by others (mode %v): whoever reads it can flip the proxies; chmod 600 %s", flag, path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", usageError("--%s: %v", flag, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", usageError("--%s %s: the token must be at least 16 characters (e.g. head -c 32 /dev/urandom | base64 > %s; chmod 600 %s)", flag, path, path, path)
	}
	return tok, nil
}

// flipTokenHint says how to make a token file.
const flipTokenHint = "head -c 32 /dev/urandom | base64 > flip.token; chmod 600 flip.token; pass it as --admin-token-file to every proxy and --proxy-token-file to every control node"
