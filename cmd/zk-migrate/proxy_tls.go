package main

import (
	"crypto/tls"
	"log"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// proxyTLSFlags are zk-migrate proxy's TLS and SASL flags (README,
// "TLS and SASL on the proxy"). Every certificate is reloaded when it
// changes on disk (tlsconf).
func proxyTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "secure-listen", Usage: "address of a TLS client port, for clients that speak TLS to ZooKeeper (as a server's secureClientPort); needs --client-tls-cert", EnvVars: []string{"ZKM_SECURE_LISTEN"}},
		&cli.StringFlag{Name: "client-tls-cert", Usage: "certificate (PEM) the TLS client port serves", EnvVars: []string{"ZKM_CLIENT_TLS_CERT"}},
		&cli.StringFlag{Name: "client-tls-key", Usage: "the key of --client-tls-cert (PEM)", EnvVars: []string{"ZKM_CLIENT_TLS_KEY"}},
		&cli.StringFlag{Name: "client-tls-ca", Usage: "mutual TLS on the TLS client port: clients must present a certificate signed by this CA (as ssl.clientAuth=need)", EnvVars: []string{"ZKM_CLIENT_TLS_CA"}},
		&cli.StringFlag{Name: "zk-tls-ca", Usage: "speak TLS to ZooKeeper (both ensembles' secureClientPort): CA bundle their certificates chain to", EnvVars: []string{"ZKM_ZK_TLS_CA"}},
		&cli.StringFlag{Name: "zk-tls-cert", Usage: "client certificate (PEM) presented to ZooKeeper (servers with ssl.clientAuth=need); its DN is the x509 identity every client of the proxy shares upstream", EnvVars: []string{"ZKM_ZK_TLS_CERT"}},
		&cli.StringFlag{Name: "zk-tls-key", Usage: "the key of --zk-tls-cert (PEM)", EnvVars: []string{"ZKM_ZK_TLS_KEY"}},
		&cli.StringFlag{Name: "zk-tls-ensembles", Value: "source,target", Usage: "two-ensemble mode with --zk-tls-ca: the ensembles reached over TLS (source, target or both); the other one in plaintext, for a migration from a plaintext ensemble to a TLS one or back", EnvVars: []string{"ZKM_ZK_TLS_ENSEMBLES"}},
		&cli.StringFlag{Name: "admin-tls-cert", Usage: "serve the admin endpoint over HTTPS with this certificate (PEM); advertised as https:// in gossip", EnvVars: []string{"ZKM_ADMIN_TLS_CERT"}},
		&cli.StringFlag{Name: "admin-tls-key", Usage: "the key of --admin-tls-cert (PEM)", EnvVars: []string{"ZKM_ADMIN_TLS_KEY"}},
		&cli.StringFlag{Name: "admin-tls-client-ca", Usage: "mutual TLS on the admin endpoint: callers (the control nodes' --proxy-tls-cert) must present a certificate signed by this CA", EnvVars: []string{"ZKM_ADMIN_TLS_CLIENT_CA"}},
		&cli.StringFlag{Name: "mirror-auth-file", Usage: "two-ensemble mode: file (mode 600) holding a digest user:password the proxy presents on the shadow sessions and mirror reads of SASL-authenticated clients (SASL cannot be replayed); the ensembles must let it write what those clients write (e.g. their superDigest)", EnvVars: []string{"ZKM_MIRROR_AUTH_FILE"}},
	}
}

// proxyTLS is what the proxy's TLS flags configure; nil fields are off.
type proxyTLS struct {
	Client   *tls.Config                         // the TLS client port
	Upstream func(serverName string) *tls.Config // connections to ZooKeeper
	Admin    *tls.Config                         // the admin endpoint
	Mirror   []zkclient.Auth                     // SASL clients' shadow identity
	// Plaintext lists the servers of the ensemble left out of
	// --zk-tls-ensembles.
	Plaintext []string
}

func loadProxyTLS(c *cli.Context, log *slog.Logger) (*proxyTLS, error) {
	out := &proxyTLS{}
	pair := func(cert, key string) error {
		if (c.String(cert) == "") != (c.String(key) == "") {
			return usageError("--%s and --%s go together", cert, key)
		}
		return nil
	}
	for _, p := range [][2]string{{"client-tls-cert", "client-tls-key"}, {"zk-tls-cert", "zk-tls-key"}, {"admin-tls-cert", "admin-tls-key"}} {
		if err := pair(p[0], p[1]); err != nil {
			return nil, err
		}
	}
	switch {
	case c.String("secure-listen") != "" && c.String("client-tls-cert") == "":
		return nil, usageError("--secure-listen needs --client-tls-cert and --client-tls-key (the certificate the TLS client port serves)")
	case c.String("secure-listen") == "" && (c.String("client-tls-cert") != "" || c.String("client-tls-ca") != ""):
		return nil, usageError("--client-tls-cert/--client-tls-ca configure the TLS client port: give its address as --secure-listen")
	case c.String("zk-tls-cert") != "" && c.String("zk-tls-ca") == "":
		return nil, usageError("--zk-tls-cert needs --zk-tls-ca (the CA ZooKeeper's certificates chain to)")
	case c.String("admin-tls-client-ca") != "" && c.String("admin-tls-cert") == "":
		return nil, usageError("--admin-tls-client-ca needs --admin-tls-cert and --admin-tls-key (HTTPS on the admin endpoint)")
	case c.String("admin-tls-cert") != "" && c.String("admin-addr") == "":
		return nil, usageError("--admin-tls-cert configures the admin endpoint: give its address as --admin-addr")
	}
	if cert := c.String("client-tls-cert"); cert != "" {
		f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: c.String("client-tls-key"), CA: c.String("client-tls-ca"), Logger: log})
		if err != nil {
			return nil, usageError("TLS client port: %v", err)
		}
		auth := tlsconf.NoClientCert
		if c.String("client-tls-ca") != "" {
			auth = tlsconf.RequireClientCert
		}
		out.Client = f.ServerConfig(auth)
	}
	if ca := c.String("zk-tls-ca"); ca != "" {
		f, err := tlsconf.Load(tlsconf.Paths{Cert: c.String("zk-tls-cert"), Key: c.String("zk-tls-key"), CA: ca, Logger: log})
		if err != nil {
			return nil, usageError("TLS to ZooKeeper: %v", err)
		}
		out.Upstream = f.ClientConfig
		plain, err := plaintextServers(c)
		if err != nil {
			return nil, err
		}
		out.Plaintext = plain
	} else if c.IsSet("zk-tls-ensembles") {
		return nil, usageError("--zk-tls-ensembles needs --zk-tls-ca")
	}
	if cert := c.String("admin-tls-cert"); cert != "" {
		f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: c.String("admin-tls-key"), CA: c.String("admin-tls-client-ca"), Logger: log})
		if err != nil {
			return nil, usageError("admin endpoint TLS: %v", err)
		}
		auth := tlsconf.NoClientCert
		if c.String("admin-tls-client-ca") != "" {
			auth = tlsconf.RequireClientCert
		}
		out.Admin = f.ServerConfig(auth)
	}
	if path := c.String("mirror-auth-file"); path != "" {
		if c.String("source") == "" {
			return nil, usageError("--mirror-auth-file is for two-ensemble mode (--source and --target)")
		}
		fi, err := os.Stat(path)
		if err != nil {
			return nil, usageError("--mirror-auth-file: %v", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, usageError("--mirror-auth-file %s is readable by others (mode %v); chmod 600 %s", path, fi.Mode().Perm(), path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, usageError("--mirror-auth-file: %v", err)
		}
		cred := strings.TrimSpace(string(b))
		if user, pw, ok := strings.Cut(cred, ":"); !ok || user == "" || pw == "" {
			return nil, usageError("--mirror-auth-file %s: want one line user:password (a digest identity)", path)
		}
		out.Mirror = []zkclient.Auth{{Scheme: "digest", Secret: []byte(cred)}}
	}
	return out, nil
}

// adminErrorLog turns net/http's errors on the proxy's admin endpoint
// into log lines; a plaintext request to the HTTPS-only endpoint (which
// net/http answers 400) says so, with the fix.
func adminErrorLog(logger *slog.Logger) *log.Logger {
	return log.New(logWriter(func(msg string) {
		msg = strings.TrimSpace(msg)
		switch {
		case strings.Contains(msg, "client sent an HTTP request to an HTTPS server"):
			logger.Warn("admin: refused a plaintext HTTP request on the HTTPS-only admin endpoint (answered 400)", "detail", msg,
				"hint", "the control plane reaches the proxy at the https:// URL it advertises in gossip; give control nodes --proxy-tls-ca")
		case strings.Contains(msg, "TLS handshake error"):
			logger.Warn("admin: "+msg, "hint", "callers need the CA of --admin-tls-cert (control: --proxy-tls-ca) and, with --admin-tls-client-ca, a client certificate (control: --proxy-tls-cert)")
		default:
			logger.Warn("admin: " + msg)
		}
	}), "", 0)
}

// proxyFleetClient is the control node's HTTP client to the proxies'
// admin endpoints: HTTPS verified with --proxy-tls-ca, presenting
// --proxy-tls-cert for mutual TLS, reloaded when they change; nil (the
// default client) without them.
func proxyFleetClient(c *cli.Context, log *slog.Logger) (*http.Client, error) {
	ca, cert, key := c.String("proxy-tls-ca"), c.String("proxy-tls-cert"), c.String("proxy-tls-key")
	if ca == "" && cert == "" && key == "" {
		return nil, nil
	}
	if (cert == "") != (key == "") {
		return nil, usageError("--proxy-tls-cert and --proxy-tls-key go together")
	}
	if ca == "" {
		return nil, usageError("--proxy-tls-cert needs --proxy-tls-ca (the CA of the proxies' --admin-tls-cert)")
	}
	f, err := tlsconf.Load(tlsconf.Paths{Cert: cert, Key: key, CA: ca, Logger: log})
	if err != nil {
		return nil, usageError("proxy admin TLS: %v", err)
	}
	return &http.Client{Transport: f.HTTPTransport(), Timeout: 2 * time.Minute}, nil
}

// plaintextServers are the servers of the ensembles --zk-tls-ensembles
// leaves out (two-ensemble mode only).
func plaintextServers(c *cli.Context) ([]string, error) {
	tlsOn := map[ensemble.Name]bool{}
	for _, w := range strings.Split(c.String("zk-tls-ensembles"), ",") {
		if w = strings.TrimSpace(w); w == "" {
			continue
		}
		n, err := ensemble.Parse(w)
		if err != nil {
			return nil, usageError("--zk-tls-ensembles: %v", err)
		}
		tlsOn[n] = true
	}
	if len(tlsOn) == 0 {
		return nil, usageError("--zk-tls-ensembles is empty: give source, target or source,target (or drop --zk-tls-ca)")
	}
	if c.String("upstream") != "" {
		if c.IsSet("zk-tls-ensembles") {
			return nil, usageError("--zk-tls-ensembles is for two-ensemble mode (--source and --target); with --upstream, --zk-tls-ca alone decides")
		}
		return nil, nil
	}
	var plain []string
	for _, e := range ensemble.Names {
		if tlsOn[e] {
			continue
		}
		hosts, err := parseHosts(e.Flag(), c.String(e.Flag()))
		if err != nil {
			return nil, usageError("%v", err)
		}
		plain = append(plain, hosts...)
	}
	return plain, nil
}
