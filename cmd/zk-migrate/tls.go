package main

import (
	"crypto/tls"
	"crypto/x509"
	"log"
	"log/slog"
	"net/http"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/raftstore"
	"github.com/zk-migrate/zk-migrate/tlsconf"
)

// controlTLSFlags are zk-migrate control's TLS flags (README, "Security:
// TLS and the audit trail").
func controlTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-cert", Usage: "serve the API over HTTPS with this certificate (PEM; reloaded when it changes); also presented to other nodes' APIs"},
		&cli.StringFlag{Name: "tls-key", Usage: "the key of --tls-cert (PEM)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "CA that signed the other control nodes' API certificates (default: the system roots)"},
		&cli.StringFlag{Name: "tls-client-ca", Usage: "mutual TLS on the API: clients (the CLI, other nodes) must present a certificate signed by this CA"},
		&cli.StringFlag{Name: "raft-tls-cert", Usage: "mutual TLS on the Raft transport: this node's certificate (PEM, naming its --raft-addr host)"},
		&cli.StringFlag{Name: "raft-tls-key", Usage: "the key of --raft-tls-cert"},
		&cli.StringFlag{Name: "raft-tls-ca", Usage: "CA every control node's Raft certificate must chain to: a dedicated CA for Raft, never the API clients' CA"},
		&cli.StringFlag{Name: "raft-tls-peer-name", Value: raftstore.DefaultPeerName,
			Usage: "identity (a DNS SAN or the CN) every control node's Raft certificate carries, with the serverAuth and clientAuth usages; other certificates of --raft-tls-ca are refused on the Raft port"},
	}
}

// controlTLS is what the control node's TLS flags configure.
type controlTLS struct {
	// API is this node's HTTPS material, nil for plain HTTP.
	API *tlsconf.Files
	// ClientAuth for the API's clients.
	ClientAuth tlsconf.ClientAuth
	// APIClientCA verifies the API's clients (mutual TLS); nil without.
	APIClientCA *tlsconf.Files
	// Peer is the transport to other nodes' APIs (nil: the default).
	Peer http.RoundTripper
	// Raft is the Raft transport's mutual TLS, nil for plain TCP.
	Raft *raftstore.TLS
}

func loadControlTLS(c *cli.Context, logger *slog.Logger) (*controlTLS, error) {
	out := &controlTLS{}
	cert, key, ca, clientCA := c.String("tls-cert"), c.String("tls-key"), c.String("tls-ca"), c.String("tls-client-ca")
	if cert == "" && (key != "" || ca != "" || clientCA != "") {
		return nil, usageError("--tls-key, --tls-ca and --tls-client-ca need --tls-cert (HTTPS on the API)")
	}
	if cert != "" {
		if key == "" {
			return nil, usageError("--tls-cert needs --tls-key")
		}
		f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: key, CA: clientCA, Logger: logger})
		if err != nil {
			return nil, usageError("%v", err)
		}
		out.API = f
		if clientCA != "" {
			out.ClientAuth = tlsconf.RequireClientCert
		}
		// To other nodes: verify them with --tls-ca, present our own
		// certificate (their API may require one).
		peer, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: key, CA: ca, Logger: logger})
		if err != nil {
			return nil, usageError("%v", err)
		}
		out.Peer = peer.HTTPTransport()
	}
	rc, rk, rca := c.String("raft-tls-cert"), c.String("raft-tls-key"), c.String("raft-tls-ca")
	if rc != "" || rk != "" || rca != "" {
		if rc == "" || rk == "" || rca == "" {
			return nil, usageError("Raft TLS is mutual: give --raft-tls-cert, --raft-tls-key and --raft-tls-ca together")
		}
		f, err := tlsconf.Load(tlsconf.Paths{Cert: rc, Key: rk, CA: rca, Logger: logger})
		if err != nil {
			return nil, usageError("%v", err)
		}
		name := c.String("raft-tls-peer-name")
		if err := checkOwnRaftCert(rc, rk, name); err != nil {
			return nil, err
		}
		out.Raft = &raftstore.TLS{Server: f.ServerConfig(tlsconf.RequireClientCert), Client: f.ClientConfig, PeerName: name}
	}
	return out, nil
}

// checkOwnRaftCert refuses to start with a Raft certificate the other
// control nodes would refuse (raftstore.CheckPeerCert): better a usage
// error here than a node that never reaches its peers.
func checkOwnRaftCert(cert, key, name string) error {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return usageError("--raft-tls-cert: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return usageError("--raft-tls-cert: %v", err)
	}
	if err := raftstore.CheckPeerCert(leaf, name); err != nil {
		return usageError("--raft-tls-cert %s: %v; the other control nodes would refuse it. Issue it with the DNS SAN %q (or pass the identity your Raft certificates carry as --raft-tls-peer-name) and the serverAuth and clientAuth usages, from a CA dedicated to Raft", cert, err, name)
	}
	return nil
}

// httpErrorLog turns net/http's server errors into log lines; a plaintext
// request to the HTTPS port says so, with the fix.
func httpErrorLog(logger *slog.Logger) *log.Logger {
	return log.New(logWriter(func(msg string) {
		msg = strings.TrimSpace(msg)
		if strings.Contains(msg, "client sent an HTTP request to an HTTPS server") {
			logger.Warn("api: refused a plaintext HTTP request on the HTTPS-only API port (answered 400)", "detail", msg,
				"hint", "use https:// in --api / ZKM_API, and --ca-cert / ZKM_CA_CERT")
			return
		}
		if strings.Contains(msg, "TLS handshake error") {
			logger.Warn("api: "+msg, "hint", "a TLS client needs --ca-cert (and --client-cert/--client-key with --tls-client-ca)")
			return
		}
		logger.Warn("api: " + msg)
	}), "", 0)
}

type logWriter func(string)

func (w logWriter) Write(p []byte) (int, error) { w(string(p)); return len(p), nil }

// apiTLSFlags are the CLI's flags for an HTTPS control plane.
func apiTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ca-cert", Usage: "CA that signed the control nodes' API certificates (https:// --api)", EnvVars: []string{"ZKM_CA_CERT"}},
		&cli.StringFlag{Name: "client-cert", Usage: "client certificate for an API with mutual TLS (PEM)", EnvVars: []string{"ZKM_CLIENT_CERT"}},
		&cli.StringFlag{Name: "client-key", Usage: "the key of --client-cert (PEM)", EnvVars: []string{"ZKM_CLIENT_KEY"}},
	}
}

// apiTransport is the CLI's transport to the API: nil (the default) unless
// a CA or a client certificate is given.
func apiTransport(c *cli.Context) (http.RoundTripper, error) {
	ca, cert, key := c.String("ca-cert"), c.String("client-cert"), c.String("client-key")
	if ca == "" && cert == "" && key == "" {
		return nil, nil
	}
	if (cert == "") != (key == "") {
		return nil, usageError("--client-cert and --client-key go together")
	}
	f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: key, CA: ca, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, usageError("%v", err)
	}
	return f.HTTPTransport(), nil
}
