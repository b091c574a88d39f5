package raftstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
)

// pokeStream dials the Raft port with a given client configuration, as a
// hand-made Raft client would (the prober's raftpoke).
type pokeStream struct{ cfg *tls.Config }

func (s pokeStream) Dial(a raft.ServerAddress, t time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: t}, "tcp", string(a), s.cfg)
}
func (s pokeStream) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (s pokeStream) Close() error              { return nil }
func (s pokeStream) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// TestRaftRefusesCertificatesThatAreNotControlNodes: certificates signed
// by the Raft CA that are not control nodes' Raft certificates (an API
// client's: clientAuth only, CN=alice; one with both usages but without
// the peer identity) cannot speak Raft: an AppendEntries with a higher
// term carrying a forged command is refused before Raft reads it, so the
// leader stays leader in its term and nothing is appended. A node
// certificate (the identity, both usages) from the same CA gets an answer.
func TestRaftRefusesCertificatesThatAreNotControlNodes(t *testing.T) {
	ca, err := tlstest.NewCA("shared CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logs := &syncBuffer{}
	n, err := Open(Config{ID: "c1", Dir: filepath.Join(dir, "c1"), BindAddr: freeAddr(t), Bootstrap: true,
		TLS: tlsFor(t, ca, dir, "c1"), Logger: slog.New(slog.NewTextHandler(logs, nil)),
		HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// A new leader appends its no-op entry after it is known as leader:
	// wait for it, or it counts as a forged entry ("log grew 1->2").
	if err := n.Barrier(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	forged, _ := json.Marshal(control.Command{Kind: control.CmdRecord, Migration: "m1", By: "mallory"})
	poke := func(iss tlstest.Issued) error {
		t.Helper()
		cert, err := tls.LoadX509KeyPair(iss.Cert, iss.Key)
		if err != nil {
			t.Fatal(err)
		}
		tr := raft.NewNetworkTransport(pokeStream{&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "127.0.0.1"}}, 1, 5*time.Second, os.Stderr)
		defer tr.Close()
		last, term := n.raft.LastIndex(), n.raft.CurrentTerm()
		req := raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: 3, ID: []byte("mallory"), Addr: []byte("127.0.0.1:1")},
			Term: term + 100, PrevLogEntry: last, PrevLogTerm: term, LeaderCommitIndex: last + 1,
			Entries: []*raft.Log{{Index: last + 1, Term: term + 100, Type: raft.LogCommand, Data: forged}}}
		var resp raft.AppendEntriesResponse
		return tr.AppendEntries("c1", raft.ServerAddress(n.Addr()), &req, &resp)
	}
	clientOnly, err := ca.IssueWith(dir, "alice", tlstest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, "alice")
	if err != nil {
		t.Fatal(err)
	}
	noIdentity, err := ca.Issue(dir, "bob", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	identityClientOnly, err := ca.IssueWith(dir, "carol", tlstest.Options{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, DefaultPeerName)
	if err != nil {
		t.Fatal(err)
	}
	for name, iss := range map[string]tlstest.Issued{"API client certificate": clientOnly, "no peer identity": noIdentity, "identity, clientAuth only": identityClientOnly} {
		last, term := n.raft.LastIndex(), n.raft.CurrentTerm()
		if err := poke(iss); err == nil {
			t.Errorf("%s: AppendEntries answered", name)
		}
		if !n.IsLeader() || n.raft.CurrentTerm() != term || n.raft.LastIndex() != last {
			t.Fatalf("%s: the leader was deposed or its log grew: leader=%v term %d->%d last %d->%d", name, n.IsLeader(), term, n.raft.CurrentTerm(), last, n.raft.LastIndex())
		}
	}
	if !strings.Contains(logs.String(), "is not a control node's Raft certificate") {
		t.Fatalf("no refusal in the log:\n%s", logs.String())
	}
	for _, e := range n.State().Audit {
		if e.By == "mallory" {
			t.Fatalf("a forged command reached the state: %+v", e)
		}
	}
	// A control node's certificate from the same CA is answered (here with
	// a higher term, which a real peer has the right to send).
	peer, err := ca.Issue(dir, "c2", "127.0.0.1", DefaultPeerName)
	if err != nil {
		t.Fatal(err)
	}
	if err := poke(peer); err != nil {
		t.Fatalf("a control node's certificate was refused: %v", err)
	}
}
