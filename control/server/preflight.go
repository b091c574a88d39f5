package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// EnsembleHealth is what srvr says of each server.
type EnsembleHealth struct {
	Serving, Total int
	Versions       []string
	Problems       []string
}

// Quorum reports whether a majority serves.
func (h EnsembleHealth) Quorum() bool { return h.Serving*2 > h.Total }

// CheckEnsemble asks every server of a connect string for srvr.
func CheckEnsemble(connect string) EnsembleHealth { return CheckEnsembleTLS(connect, nil) }

// CheckEnsembleTLS is CheckEnsemble over TLS (tlsFor non-nil: the servers'
// secureClientPort).
func CheckEnsembleTLS(connect string, tlsFor func(serverName string) *tls.Config) EnsembleHealth {
	var h EnsembleHealth
	for _, addr := range strings.Split(connect, ",") {
		addr = strings.TrimSpace(addr)
		h.Total++
		var cfg *tls.Config
		if tlsFor != nil {
			host, _, _ := net.SplitHostPort(addr)
			cfg = tlsFor(host)
		}
		out, err := zkclient.FourLetterWordTLS(addr, "srvr", 3*time.Second, cfg)
		if err != nil || !strings.Contains(out, "Mode: ") {
			h.Problems = append(h.Problems, fmt.Sprintf("%s not serving (%v%s)", addr, err, firstLine(out)))
			continue
		}
		h.Serving++
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "Zookeeper version: "); ok {
				h.Versions = append(h.Versions, strings.SplitN(v, "-", 2)[0])
			}
		}
	}
	return h
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	return ": " + strings.SplitN(s, "\n", 2)[0]
}

// Preflight checks what phase 1 needs before it touches anything: a quorum
// of A and of B reachable from here (the replicator's path between them),
// and every ACL under the paths readable with sync.auth on both sides
// (CheckACLs); it notes servers older than 3.6 (sync then uses one-shot
// watch trees). With a mesos section, the deployer must also reach every
// master and agent (checkDeployer).
func Preflight(cfg *control.Config) (notes []string, err error) {
	tlsFor, err := zkTLS(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Mesos != nil {
		if err := checkDeployer(context.Background(), cfg.Mesos); err != nil {
			return nil, fmt.Errorf("pre-flight: %w", err)
		}
	}
	for _, side := range []struct{ name, connect string }{{"A (source_zk)", cfg.Migration.SourceZK}, {"B (target_zk)", cfg.Migration.TargetZK}} {
		h := CheckEnsembleTLS(side.connect, tlsFor)
		if !h.Quorum() {
			return notes, fmt.Errorf("pre-flight: ensemble %s has no quorum reachable from the control plane: %d of %d serving: %s",
				side.name, h.Serving, h.Total, strings.Join(h.Problems, "; "))
		}
		for _, v := range h.Versions {
			var major, minor int
			if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err == nil && (major < 3 || major == 3 && minor < 6) {
				notes = append(notes, fmt.Sprintf("ensemble %s runs ZooKeeper %s: sync uses one-shot watch trees", side.name, v))
				break
			}
		}
		if len(h.Problems) > 0 {
			notes = append(notes, fmt.Sprintf("ensemble %s: %s", side.name, strings.Join(h.Problems, "; ")))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), aclScanTimeout)
	defer cancel()
	hidden, err := CheckACLs(ctx, cfg)
	if err != nil {
		return notes, fmt.Errorf("pre-flight: %w", err)
	}
	if len(hidden) > 0 {
		return notes, fmt.Errorf("pre-flight: phase 1 cannot copy or verify these znodes with sync.auth %v: %s",
			redactAuth(cfg.Sync.Auth), replicator.DescribeUnreadable(hidden, 0))
	}
	return notes, nil
}

// aclScanTimeout bounds CheckACLs in Preflight (a full read of both trees).
const aclScanTimeout = 2 * time.Minute

// CheckACLs reads every znode under the migration's paths on A and on B
// with sync.auth, as the replicator will, and lists those whose digest ACL
// ZooKeeper hides (user:x: no ADMIN permission on the node). Phase 1 could
// neither copy nor verify them.
func CheckACLs(ctx context.Context, cfg *control.Config) ([]replicator.UnreadableACL, error) {
	opts, err := zkOptions(cfg)
	if err != nil {
		return nil, err
	}
	var out []replicator.UnreadableACL
	for _, side := range []replicator.Side{replicator.SideA, replicator.SideB} {
		connect := []string{cfg.Migration.SourceZK, cfg.Migration.TargetZK}[side]
		conn, err := zkclient.Dial(ctx, strings.Split(connect, ","), opts)
		if err != nil {
			return nil, fmt.Errorf("ACL check on ensemble %s: %w", side, err)
		}
		for _, root := range cfg.Migration.Paths {
			t, err := replicator.ReadTree(ctx, []*zkclient.Conn{conn}, root, replicator.ReadOptions{})
			if err != nil {
				_ = conn.Close()
				return nil, fmt.Errorf("ACL check of %s on ensemble %s: %w", root, side, err)
			}
			for _, p := range t.Unreadable {
				out = append(out, replicator.UnreadableACL{Side: side, Path: p, ACL: t.Nodes[p].ACL})
			}
		}
		_ = conn.Close()
	}
	return out, nil
}

// syncAuth parses sync.auth (scheme:secret, validated with the config).
func syncAuth(cfg *control.Config) []zkclient.Auth {
	auth, _ := replicator.ParseAuth(cfg.Sync.Auth) // validated with the config
	return auth
}

// dialer is the migration's replicator.Dialer: A, B and sync.auth.
func dialer(cfg *control.Config) replicator.Dialer {
	tlsFor, _ := zkTLS(cfg) // Preflight refuses a sync.tls that does not load
	return replicator.Dialer{Ensembles: [2][]string{strings.Split(cfg.Migration.SourceZK, ","), strings.Split(cfg.Migration.TargetZK, ",")},
		Auth: syncAuth(cfg), TLS: tlsFor}
}

// redactAuth shows sync.auth without its secrets' passwords.
func redactAuth(auth []string) []string {
	out := make([]string, len(auth))
	for i, a := range auth {
		scheme, secret, _ := strings.Cut(a, ":")
		user, _, _ := strings.Cut(secret, ":")
		out[i] = scheme + ":" + user + ":***"
	}
	return out
}
