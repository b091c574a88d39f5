package zktest

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
)

// TLSMaterial is a CA, a server key store and a client certificate made
// by MakeTLS for a TLS-only ensemble.
type TLSMaterial struct {
	// Server goes into Config.TLS (it requires client certificates).
	Server *TLS
	// CA, ClientCert and ClientKey are PEM files for clients (the CA
	// signed the servers' certificate and the client's).
	CA, ClientCert, ClientKey string
	// Client is the client configuration over those files.
	Client *tlsconf.Files
}

// MakeTLS writes into dir a fresh CA, a key store for the servers
// (certificate for 127.0.0.1 and localhost, with its key, in one PEM file)
// and a client certificate, all made now with crypto/x509.
func MakeTLS(dir string) (*TLSMaterial, error) {
	ca, err := tlstest.NewCA("zktest CA")
	if err != nil {
		return nil, err
	}
	m := &TLSMaterial{CA: filepath.Join(dir, "zk-ca.pem")}
	if err := ca.WriteCA(m.CA); err != nil {
		return nil, err
	}
	srv, err := ca.Issue(dir, "zk-server", "127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(srv.Cert)
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(srv.Key)
	if err != nil {
		return nil, err
	}
	ks := filepath.Join(dir, "zk-keystore.pem")
	if err := os.WriteFile(ks, append(key, cert...), 0o600); err != nil {
		return nil, fmt.Errorf("zktest: key store: %w", err)
	}
	cli, err := ca.Issue(dir, "zk-client", "zk-migrate")
	if err != nil {
		return nil, err
	}
	m.ClientCert, m.ClientKey = cli.Cert, cli.Key
	if m.Client, err = tlsconf.Load(tlsconf.Paths{Cert: cli.Cert, Key: cli.Key, CA: m.CA}); err != nil {
		return nil, err
	}
	m.Server = &TLS{KeyStore: ks, TrustStore: m.CA, Client: m.Client.ClientConfig}
	return m, nil
}
