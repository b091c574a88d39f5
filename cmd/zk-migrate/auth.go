package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// syncAuthEnv holds sync's and validate's credentials, one
// scheme:credentials a line, off the command line.
const syncAuthEnv = "ZKM_SYNC_AUTH"

// authFileFlag is --auth-file: the credentials in a file only its owner may
// read, so the password is not in argv (ps, /proc/PID/cmdline).
func authFileFlag() cli.Flag {
	return &cli.StringFlag{Name: "auth-file", EnvVars: []string{"ZKM_SYNC_AUTH_FILE"},
		Usage: "file of credentials, one scheme:secret a line (digest:user:password), mode 600: keeps the password out of ps (or set " + syncAuthEnv + ")"}
}

// loadAuth gathers the credentials used on both ensembles from --auth,
// --auth-file and ZKM_SYNC_AUTH. --auth on the command line shows the
// password to anyone on the host who lists processes: that is warned.
func loadAuth(c *cli.Context) ([]zkclient.Auth, error) {
	var out []zkclient.Auth
	add := func(origin string, lines []string) error {
		for _, s := range lines {
			s = strings.TrimSpace(s)
			if s == "" || strings.HasPrefix(s, "#") {
				continue
			}
			scheme, secret, ok := strings.Cut(s, ":")
			if !ok || scheme == "" || secret == "" {
				return fmt.Errorf("%s: want scheme:secret, e.g. digest:mesos:password (got %q)", origin, redactSecret(s))
			}
			out = append(out, zkclient.Auth{Scheme: scheme, Secret: []byte(secret)})
		}
		return nil
	}
	if argv := c.StringSlice("auth"); len(argv) > 0 {
		log, _ := newLogger("info")
		log.Warn("--auth puts the password on the command line, where anyone on this host can read it (ps, /proc/PID/cmdline): "+
			"use --auth-file (mode 600) or "+syncAuthEnv, "hint", "printf 'digest:user:password\\n' > sync.auth; chmod 600 sync.auth; --auth-file sync.auth")
		if err := add("--auth", argv); err != nil {
			return nil, err
		}
	}
	if path := c.String("auth-file"); path != "" {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("--auth-file: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("--auth-file %s is readable by others (mode %v): it holds passwords; chmod 600 %s", path, fi.Mode().Perm(), path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--auth-file: %w", err)
		}
		if err := add("--auth-file "+path, strings.Split(string(b), "\n")); err != nil {
			return nil, err
		}
	}
	if env := os.Getenv(syncAuthEnv); env != "" {
		if err := add(syncAuthEnv, strings.Split(env, "\n")); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// redactSecret hides what follows the first two colons of a malformed
// credential before it is printed.
func redactSecret(s string) string {
	if i := strings.LastIndex(s, ":"); i >= 0 {
		return s[:i+1] + "***"
	}
	if len(s) > 0 {
		return "***"
	}
	return s
}
