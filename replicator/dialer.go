package replicator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Dialer opens the replicator's sessions on the two ensembles: the one way
// every caller (the sync command, the control plane's phase 1, the
// sandbox) builds a replicator. Its Dial is ContinuousConfig.Dial; its
// Endpoints are the snapshot copy's and Validate's sessions.
type Dialer struct {
	// Ensembles are the servers of A (SideA) and B (SideB), host:port.
	Ensembles [2][]string
	// Auth is added on every session (sync.auth, --auth).
	Auth []zkclient.Auth
	// TLS, if set, gives each connection's TLS configuration (the servers'
	// secureClientPort); nil is plaintext. A dial error that looks like a
	// TLS-only port answering plaintext says so.
	TLS func(serverName string) *tls.Config
}

// ParseAuth parses scheme:secret credentials (digest:user:password).
func ParseAuth(auth []string) ([]zkclient.Auth, error) {
	var out []zkclient.Auth
	for _, a := range auth {
		scheme, secret, ok := strings.Cut(a, ":")
		if !ok || scheme == "" || secret == "" {
			return nil, fmt.Errorf("credential %q: want scheme:secret, e.g. digest:mesos:password", a)
		}
		out = append(out, zkclient.Auth{Scheme: scheme, Secret: []byte(secret)})
	}
	return out, nil
}

// Dial opens a session on side; with resume it resumes that session (id
// and password), so the ephemerals a writer session mirrors survive a
// connection loss.
func (d Dialer) Dial(ctx context.Context, side Side, resume *zkclient.Conn) (*zkclient.Conn, error) {
	opts := zkclient.Options{Auth: d.Auth, TLS: d.TLS}
	if resume != nil {
		opts.SessionID, opts.Passwd = resume.SessionID(), resume.Passwd()
	}
	c, err := zkclient.Dial(ctx, d.Ensembles[side], opts)
	if err != nil && d.TLS == nil && errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ensemble %s (%s): %w (a server closed the connection unanswered: it may have no quorum, or serve TLS only on a secureClientPort: then give --tls-ca, and --tls-cert/--tls-key)",
			side, strings.Join(d.Ensembles[side], ","), err)
	}
	if err != nil {
		return nil, fmt.Errorf("ensemble %s (%s): %w", side, strings.Join(d.Ensembles[side], ","), err)
	}
	return c, nil
}

// Endpoints opens readers sessions on each side (at least one); close
// closes them all.
func (d Dialer) Endpoints(ctx context.Context, readers int) (ep Endpoints, closeAll func(), err error) {
	closeAll = func() {
		for _, c := range append(ep.Source, ep.Target...) {
			_ = c.Close()
		}
	}
	for i := 0; i < max(readers, 1); i++ {
		s, err := d.Dial(ctx, SideA, nil)
		if err != nil {
			closeAll()
			return Endpoints{}, nil, err
		}
		ep.Source = append(ep.Source, s)
		t, err := d.Dial(ctx, SideB, nil)
		if err != nil {
			closeAll()
			return Endpoints{}, nil, err
		}
		ep.Target = append(ep.Target, t)
	}
	return ep, closeAll, nil
}
