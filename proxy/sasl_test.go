package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// kazooSASL is a kazoo client over TLS, authenticated with SASL
// DIGEST-MD5 when a user is given, driven line by line on stdin:
// "get P", "set P DATA", "create P" (ACL: sasl:USER, all), each answered
// "R <n> OK|<exception>"; operations retry through connection losses (the
// proxy closes a SASL client's connection to make it authenticate again).
const kazooSASL = `
import sys
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry
from kazoo.security import make_acl
host, ca, cert, key, user, pw = sys.argv[1:7]
opts = {'mechanism': 'DIGEST-MD5', 'username': user, 'password': pw} if user else None
retry = dict(max_tries=-1, delay=0.05, max_delay=0.5)
zk = KazooClient(hosts=host, timeout=8, use_ssl=True, ca=ca, certfile=cert, keyfile=key, verify_certs=True,
                 sasl_options=opts, connection_retry=retry, command_retry=retry)
import threading
lock = threading.Lock()
def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
zk.add_listener(lambda s: say("STATE " + str(s)))
zk.start(timeout=20)
say("READY 0x%x" % zk.client_id[0])
for n, line in enumerate(sys.stdin):
    parts = line.split()
    if not parts:
        continue
    try:
        if parts[0] == "get":
            zk.retry(zk.get, parts[1])
        elif parts[0] == "set":
            zk.retry(zk.set, parts[1], parts[2].encode())
        elif parts[0] == "create":
            zk.retry(zk.create, parts[1], b"c", acl=[make_acl("sasl", user, all=True)])
        say("R %d OK" % n)
    except Exception as e:
        say("R %d %s" % (n, type(e).__name__))
zk.stop()
`

type kazooClient struct {
	ic *interactive
	n  int
}

func startKazooSASL(t *testing.T, sp *securePair, addr, user, pw string) (*kazooClient, int64) {
	t.Helper()
	requireFile(t, python, "python3-kazoo")
	script := filepath.Join(t.TempDir(), "kazoo_sasl.py")
	if err := os.WriteFile(script, []byte(kazooSASL), 0o644); err != nil {
		t.Fatal(err)
	}
	ic := startInteractive(t, python, script, addr, sp.ClientCA, sp.AppCert, sp.AppKey, user, pw)
	ready := ic.waitLine(t, "READY ", 60*time.Second)
	return &kazooClient{ic: ic}, parseSession(t, strings.Fields(ready)[1])
}

// do sends one command and returns its answer: OK or kazoo's exception.
func (k *kazooClient) do(t *testing.T, cmd string) string {
	t.Helper()
	if _, err := io.WriteString(k.ic.stdin, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	line := k.ic.waitLine(t, fmt.Sprintf("R %d ", k.n), 60*time.Second)
	k.n++
	return strings.Fields(line)[2]
}

// TestSASLThroughTheProxy authenticates kazoo with SASL DIGEST-MD5 as
// alice through a TLS two-ensemble proxy and checks that every ACL check
// gives the same answer before a server death, after it (the proxy closes
// the connection, kazoo authenticates again), and after the flip (the
// same), that alice's writes to her SASL-protected znodes reach the
// secondary through the shadow session (the proxy's mirror identity) and
// A again after the flip, and that clients without the right credentials
// get NOAUTH through the proxy exactly as from ZooKeeper.
func TestSASLThroughTheProxy(t *testing.T) {
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := fmt.Sprintf("/sasl-%d", time.Now().UnixNano())
	sa, sb := sp.superConn(t, sp.A), sp.superConn(t, sp.B)
	saslACL := func(user string) []jute.ACL {
		return []jute.ACL{{Perms: jute.PermAll, ID: jute.Id{Scheme: "sasl", ID: user}}}
	}
	// The same tree on both ensembles, as the snapshot leaves it.
	for _, c := range []*zkclient.Conn{sa, sb} {
		for _, n := range []struct {
			path string
			acl  []jute.ACL
		}{{root, zkclient.OpenACL}, {root + "/alice", saslACL("alice")}, {root + "/bob", saslACL("bob")}} {
			if _, err := c.Create(ctx, n.path, []byte("init"), n.acl, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	p, logs := sp.startProxy(t)
	alice, sid := startKazooSASL(t, sp, p.TLSAddr, "alice", alicePw)

	want := map[string]string{"get alice": "OK", "set alice": "OK", "create alice": "OK", "get bob": "NoAuthError", "set bob": "NoAuthError"}
	check := func(stage string) {
		t.Helper()
		got := map[string]string{
			"get alice":    alice.do(t, "get "+root+"/alice"),
			"set alice":    alice.do(t, "set "+root+"/alice "+stage),
			"create alice": alice.do(t, "create "+root+"/alice/"+stage),
			"get bob":      alice.do(t, "get "+root+"/bob"),
			"set bob":      alice.do(t, "set "+root+"/bob "+stage),
		}
		for k, w := range want {
			if got[k] != w {
				t.Fatalf("%s: alice's %q through the proxy answered %s, want %s (all: %v)", stage, k, got[k], w, got)
			}
		}
		// The shadow session carried alice's writes to the secondary.
		waitMirrored(t, p)
		// Fresh readers: a server of A may have been killed under the old ones.
		for name, c := range map[string]*zkclient.Conn{"A": sp.superConn(t, sp.A), "B": sp.superConn(t, sp.B)} {
			d, _, err := c.Get(ctx, root+"/alice")
			if err != nil || string(d) != stage {
				t.Fatalf("%s: %s/alice on %s = %q, %v; want %q (mirrored by the shadow session)", stage, root, name, d, err, stage)
			}
			acl, _, err := c.GetACL(ctx, root+"/alice/"+stage)
			if err != nil || !aclEqual(acl, saslACL("alice")) {
				t.Fatalf("%s: %s/alice/%s on %s has ACL %v, %v; want sasl:alice", stage, root, stage, name, acl, err)
			}
		}
	}
	check("before")
	noauthMatches(t, sp, p.TLSAddr, root+"/alice")

	// A server death: the SASL client is made to reconnect and
	// authenticate again; the session survives.
	addr, ok := p.SessionUpstream(sid)
	if !ok {
		t.Fatal("the proxy does not know kazoo's session")
	}
	victim := serverAt(t, sp.A, addr)
	if err := sp.A.Kill(victim.ID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.A.Restart(context.Background(), victim.ID); err != nil {
			t.Errorf("restart server %d: %v", victim.ID, err)
		}
	})
	logs.waitFor(t, "session authenticated with SASL cannot be replayed", 30*time.Second)
	check("afterdeath")

	if err := p.Flip(ctx, 1, ensemble.Target); err != nil {
		t.Fatal(err)
	}
	check("afterflip")
	logs.waitFor(t, "closing the client connection so it authenticates on the new primary", 10*time.Second)
	noauthMatches(t, sp, p.TLSAddr, root+"/alice")
	if out := alice.ic.out(); strings.Contains(out, "STATE LOST") {
		t.Fatalf("kazoo's session was lost:\n%s", out)
	}
}

// noauthMatches checks that a client without alice's identity is refused
// reading and writing path through the proxy (kazoo without SASL, and
// go-zookeeper) exactly as directly from ZooKeeper.
func noauthMatches(t *testing.T, sp *securePair, proxyAddr, path string) {
	t.Helper()
	anon, _ := startKazooSASL(t, sp, proxyAddr, "", "")
	for _, cmd := range []string{"get " + path, "set " + path + " x"} {
		if got := anon.do(t, cmd); got != "NoAuthError" {
			t.Fatalf("kazoo without SASL through the proxy: %q answered %s, want NoAuthError", cmd, got)
		}
	}
	bob, _ := startKazooSASL(t, sp, proxyAddr, "bob", bobPw)
	if got := bob.do(t, "get "+path); got != "NoAuthError" {
		t.Fatalf("bob through the proxy: get %s answered %s, want NoAuthError", path, got)
	}
	via, _ := connectTLS(t, []string{proxyAddr}, sp.appTLS(t), 6*time.Second)
	direct, _ := connectTLS(t, sp.A.Addrs(), sp.ZK.Client.ClientConfig("127.0.0.1"), 6*time.Second)
	_, _, errVia := via.Get(path)
	_, _, errDirect := direct.Get(path)
	if !errors.Is(errVia, zk.ErrNoAuth) || !errors.Is(errDirect, zk.ErrNoAuth) {
		t.Fatalf("go-zookeeper without credentials: get %s through the proxy %v, directly %v; want NOAUTH from both", path, errVia, errDirect)
	}
	via.Close()
	direct.Close()
}

func serverAt(t *testing.T, e *zktest.Ensemble, addr string) *zktest.Server {
	t.Helper()
	for _, s := range e.Servers {
		if s.Addr() == addr {
			return s
		}
	}
	t.Fatalf("%s is not a server of the ensemble", addr)
	return nil
}

// aclEqual compares two ACL lists in order.
func aclEqual(a, b []jute.ACL) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// javaCLI runs one command of ZooKeeper's Java CLI (ZooKeeperMain, what
// zkCli.sh runs) over TLS with the Netty socket (PEM key and trust
// stores, which ZooKeeper 3.8's client reads) and, with a JAAS file, SASL
// DIGEST-MD5 as ZooKeeper's own tests configure the client.
func javaCLI(t *testing.T, sp *securePair, server, jaas string, cmd ...string) string {
	t.Helper()
	ks := filepath.Join(t.TempDir(), "app-keystore.pem")
	cert, err := os.ReadFile(sp.AppCert)
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(sp.AppKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ks, append(key, cert...), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-Xmx128m", "-XX:TieredStopAtLevel=1", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
		"-Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty", "-Dzookeeper.client.secure=true",
		"-Dzookeeper.ssl.keyStore.location=" + ks, "-Dzookeeper.ssl.keyStore.type=PEM",
		"-Dzookeeper.ssl.trustStore.location=" + sp.ClientCA, "-Dzookeeper.ssl.trustStore.type=PEM"}
	if jaas != "" {
		args = append(args, "-Djava.security.auth.login.config="+jaas)
	}
	args = append(args, "-cp", zktest.DefaultClassPath+":"+zktest.NettyClassPath+":/usr/share/java/netty-resolver.jar",
		"org.apache.zookeeper.ZooKeeperMain", "-server", server, "-waitforconnection", "-timeout", "30000")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "java", append(args, cmd...)...).CombinedOutput()
	return string(out)
}

// TestJavaSASLClientThroughTheProxy: ZooKeeper's Java client,
// authenticated with SASL DIGEST-MD5 from a JAAS Client section over TLS
// through the proxy, reads and writes alice's sasl:alice node as alice
// (the write mirrored to B) and is refused as bob (ZooKeeper's NOAUTH,
// "Insufficient permission").
func TestJavaSASLClientThroughTheProxy(t *testing.T) {
	sp := secureEnsembles(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path := fmt.Sprintf("/java-sasl-%d", time.Now().UnixNano())
	sa := sp.superConn(t, sp.A)
	if _, err := sa.Create(ctx, path, []byte("for-alice"), []jute.ACL{{Perms: jute.PermAll, ID: jute.Id{Scheme: "sasl", ID: "alice"}}}, 0); err != nil {
		t.Fatal(err)
	}
	p, _ := sp.startProxy(t)
	jaas := func(user, pw string) string {
		f := filepath.Join(t.TempDir(), user+"-jaas.conf")
		body := fmt.Sprintf("Client {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n  username=%q\n  password=%q;\n};\n", user, pw)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	alice, bob := jaas("alice", alicePw), jaas("bob", bobPw)
	if out := javaCLI(t, sp, p.TLSAddr, alice, "set", path, "set-by-java"); strings.Contains(out, "Exception") || strings.Contains(out, "Insufficient permission") {
		t.Fatalf("Java CLI as alice (SASL) through the proxy: set refused:\n%s", out)
	}
	if out := javaCLI(t, sp, p.TLSAddr, alice, "get", path); !strings.Contains(out, "set-by-java") {
		t.Fatalf("Java CLI as alice (SASL) through the proxy: get did not return the data:\n%s", out)
	}
	viaProxy := javaCLI(t, sp, p.TLSAddr, bob, "get", path)
	if !strings.Contains(viaProxy, "Insufficient permission") {
		t.Fatalf("Java CLI as bob through the proxy: want Insufficient permission (NOAUTH):\n%s", viaProxy)
	}
	waitMirrored(t, p)
	d, _, err := sp.superConn(t, sp.B).Get(ctx, path)
	if err != nil || string(d) != "set-by-java" {
		t.Fatalf("alice's write on B: %q, %v; want it mirrored by the shadow session", d, err)
	}
}
