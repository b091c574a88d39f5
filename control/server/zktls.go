package server

import (
	"crypto/tls"
	"fmt"
	"sync"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// zkTLSFiles keeps the loaded files of each migration.yaml sync.tls, so
// that tlsconf can reload them when they change on disk instead of every
// dial reading them again.
var zkTLSFiles = struct {
	sync.Mutex
	m map[control.ZKTLS]*tlsconf.Files
}{m: map[control.ZKTLS]*tlsconf.Files{}}

// zkTLS returns the per-dial TLS configuration of sync.tls, nil when the
// ensembles are reached in plaintext.
func zkTLS(cfg *control.Config) (func(serverName string) *tls.Config, error) {
	t := cfg.Sync.TLS
	if t.CA == "" && t.Cert == "" {
		return nil, nil
	}
	zkTLSFiles.Lock()
	defer zkTLSFiles.Unlock()
	f := zkTLSFiles.m[t]
	if f == nil {
		var err error
		if f, err = tlsconf.Load(tlsconf.Paths{CA: t.CA, Cert: t.Cert, Key: t.Key}); err != nil {
			return nil, fmt.Errorf("migration.yaml sync.tls (the files must exist on every control node): %w", err)
		}
		zkTLSFiles.m[t] = f
	}
	return f.ClientConfig, nil
}

// zkOptions are the session options of the control node's connections to
// both ensembles: sync.auth and sync.tls.
func zkOptions(cfg *control.Config) (zkclient.Options, error) {
	t, err := zkTLS(cfg)
	return zkclient.Options{Auth: syncAuth(cfg), TLS: t}, err
}
