package raftstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/tlsconf"
	"github.com/zk-migrate/zk-migrate/tlsconf/tlstest"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tlsFor(t *testing.T, ca *tlstest.CA, dir, name string) *TLS {
	t.Helper()
	iss, err := ca.Issue(dir, name, "127.0.0.1", DefaultPeerName)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca-"+name+".pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	f, err := tlsconf.Load(tlsconf.Paths{Cert: iss.Cert, Key: iss.Key, CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	return &TLS{Server: f.ServerConfig(tlsconf.RequireClientCert), Client: f.ClientConfig}
}

// TestRaftOverMutualTLS: three nodes replicate over mutual TLS; a
// plaintext connection to the Raft port is refused with a log line, and a
// node whose certificate comes from another CA never receives the log.
func TestRaftOverMutualTLS(t *testing.T) {
	ca, err := tlstest.NewCA("raft CA")
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	var nodes []*Node
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	openTLS := func(id string, cfg *TLS, bootstrap bool) *Node {
		n, err := Open(Config{ID: id, Dir: filepath.Join(base, id), BindAddr: freeAddr(t), Bootstrap: bootstrap, TLS: cfg, Logger: logger,
			HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		return n
	}
	for i := 1; i <= 3; i++ {
		openTLS(fmt.Sprintf("c%d", i), tlsFor(t, ca, base, fmt.Sprintf("c%d", i)), i == 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[0].WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		if err := nodes[0].Join(n.ID(), n.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	promote(t, nodes[0], nodes, 3)
	create := cmd(control.CmdCreate, 0)
	create.Config = &control.MigrationConfig{}
	if err := onLeader(t, nodes, func(l *Node) error { return l.Apply(ctx, create) }); err != nil {
		t.Fatal(err)
	}
	if st := waitSame(t, nodes); st.Migrations["m1"] == nil {
		t.Fatal("not replicated over TLS")
	}

	// Plaintext on the TLS-only port: refused, and said so.
	c, err := net.Dial("tcp", nodes[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("\x00plaintext raft rpc"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c) // the server closes it
	c.Close()
	waitLog := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), want); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", want, logs.String())
			}
		}
	}
	waitLog("refused a plaintext connection on the TLS-only Raft port")

	// A connection that never sends its ClientHello holds up nobody: a
	// valid peer completes its handshake while the stalled one is still
	// open.
	stalled, err := net.Dial("tcp", nodes[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	peer := tlsFor(t, ca, base, "peer")
	tc, err := tls.Dial("tcp", nodes[0].Addr(), peer.Client("127.0.0.1"))
	if err != nil {
		t.Fatalf("a valid peer behind a stalled handshake: %v", err)
	}
	tc.Close()
	_ = stalled.SetReadDeadline(time.Now())
	if _, err := stalled.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the stalled connection should still be open, waiting: %v", err)
	}

	// A node with a certificate from another CA: joins the configuration
	// (its port answers) but the handshake fails both ways, so it never
	// gets the log.
	rogueCA, _ := tlstest.NewCA("rogue CA")
	rogue := openTLS("rogue", tlsFor(t, rogueCA, base, "rogue"), false)
	if err := onLeader(t, nodes[:3], func(l *Node) error { return l.Join(rogue.ID(), rogue.Addr()) }); err != nil {
		t.Fatal(err)
	}
	waitLog("TLS handshake failed")
	time.Sleep(500 * time.Millisecond)
	if st := rogue.State(); st.Migrations["m1"] != nil {
		t.Fatal("a node with a foreign certificate received the log")
	}
}

// onLeader runs f on the node that leads, again on the next leader while
// leadership moves (elections under load), for up to 10 s.
func onLeader(t *testing.T, nodes []*Node, f func(*Node) error) error {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := f(leaderOf(t, nodes))
		if err == nil || !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
			return err
		}
	}
}
