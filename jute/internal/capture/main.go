// Command capture records golden frames for the jute round-trip tests: it
// starts a real standalone ZooKeeper, puts a recording tee in front of it,
// drives real clients through the tee (go-zookeeper, kazoo, zkCli.sh and the
// C client CLI) and writes every frame they exchange to
// jute/testdata/golden/<client>.txt, one frame a line:
//
//	<kind> <op> <hex>
//
// kind is connreq, connrsp, req or rsp; op names the request a reply
// answers ("event" for watch events). Run it with `make golden`; the output
// is checked in so the tests need no ZooKeeper.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zktest"
)

type recorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *recorder) add(kind, op string, frame []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf("%s %s %s", kind, op, hex.EncodeToString(frame)))
}

// tee accepts clients on ln and relays them to upstream, recording frames.
func tee(ln net.Listener, upstream string, rec func() *recorder) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			r := rec()
			var mu sync.Mutex
			ops := map[int32]string{}
			done := make(chan struct{})
			go func() {
				defer close(done)
				relay(u, c, func(i int, f []byte) {
					if i == 0 {
						r.add("connrsp", "connect", f)
						return
					}
					xid := int32(binary.BigEndian.Uint32(f))
					mu.Lock()
					op := ops[xid]
					mu.Unlock()
					switch xid {
					case -1:
						op = "event"
					case -2:
						op = "ping"
					}
					r.add("rsp", op, f)
				})
			}()
			relay(c, u, func(i int, f []byte) {
				if i == 0 {
					r.add("connreq", "connect", f)
					return
				}
				xid := int32(binary.BigEndian.Uint32(f))
				op := jute.Op(int32(binary.BigEndian.Uint32(f[4:])))
				mu.Lock()
				ops[xid] = op.String()
				mu.Unlock()
				r.add("req", op.String(), f)
			})
			u.Close()
			<-done
		}()
	}
}

func relay(src, dst net.Conn, record func(int, []byte)) {
	br := bufio.NewReader(src)
	for i := 0; ; i++ {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			dst.Close()
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		f := make([]byte, n)
		if _, err := io.ReadFull(br, f); err != nil {
			dst.Close()
			return
		}
		record(i, f)
		if _, err := dst.Write(append(hdr[:], f...)); err != nil {
			return
		}
	}
}

func main() {
	out := flag.String("out", "testdata/golden", "output directory")
	flag.Parse()
	ens, err := zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "golden",
		ExtraConfig: []string{"extendedTypesEnabled=true", "reconfigEnabled=true"}})
	if err != nil {
		log.Fatal(err)
	}
	defer ens.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	var cur *recorder
	var curMu sync.Mutex
	go tee(ln, ens.Addrs()[0], func() *recorder { curMu.Lock(); defer curMu.Unlock(); return cur })
	addr := ln.Addr().String()
	for _, c := range []struct {
		name string
		run  func(addr string) error
	}{
		{"go-zookeeper", goClient}, {"kazoo", kazoo}, {"zkcli", zkCli}, {"cli_mt", cliMT},
	} {
		r := &recorder{}
		curMu.Lock()
		cur = r
		curMu.Unlock()
		if err := c.run(addr); err != nil {
			log.Fatalf("%s: %v", c.name, err)
		}
		time.Sleep(300 * time.Millisecond)
		r.mu.Lock()
		body := strings.Join(r.lines, "\n") + "\n"
		r.mu.Unlock()
		if err := os.WriteFile(filepath.Join(*out, c.name+".txt"), []byte(body), 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d frames, ops %s\n", c.name, len(r.lines), opsOf(r.lines))
	}
}

func opsOf(lines []string) string {
	seen := map[string]bool{}
	for _, l := range lines {
		seen[strings.Fields(l)[1]] = true
	}
	var ops []string
	for op := range seen {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	return strings.Join(ops, ",")
}

func goClient(addr string) error {
	c, _, err := zk.Connect([]string{addr}, 5*time.Second, zk.WithLogInfo(false))
	if err != nil {
		return err
	}
	defer c.Close()
	acl := zk.WorldACL(zk.PermAll)
	steps := []func() error{
		func() error { _, err := c.Create("/g", []byte("data"), 0, acl); return err },
		func() error { _, err := c.Create("/g/seq-", nil, zk.FlagSequence|zk.FlagEphemeral, acl); return err },
		func() error { _, _ = c.CreateContainer("/g/cont", nil, zk.FlagTTL, acl); return nil },
		func() error { _, err := c.CreateTTL("/g/ttl", nil, zk.FlagTTL, acl, time.Minute); return err },
		func() error { _, _, err := c.Get("/g"); return err },
		func() error { _, _, _, err := c.GetW("/g"); return err },
		func() error { _, _, err := c.Exists("/g/none"); return err },
		func() error { _, _, _, err := c.ExistsW("/g/later"); return err },
		func() error { _, err := c.Set("/g", []byte("v2"), 0); return err },
		func() error { _, _, err := c.Children("/g"); return err },
		func() error { _, _, _, err := c.ChildrenW("/g"); return err },
		func() error { _, _, err := c.GetACL("/g"); return err },
		func() error { _, err := c.SetACL("/g", zk.WorldACL(zk.PermAll), -1); return err },
		func() error { _, err := c.Sync("/g"); return err },
		func() error { return c.AddAuth("digest", []byte("alice:secret")) },
		func() error {
			_, err := c.Multi(&zk.CreateRequest{Path: "/g/m", Data: []byte("x"), Acl: acl},
				&zk.SetDataRequest{Path: "/g/m", Data: []byte("y"), Version: 0},
				&zk.CheckVersionRequest{Path: "/g/m", Version: 1},
				&zk.DeleteRequest{Path: "/g/m", Version: -1})
			return err
		},
		func() error {
			_, _ = c.Multi(&zk.CreateRequest{Path: "/g/m2", Acl: acl}, &zk.DeleteRequest{Path: "/g/nope", Version: -1})
			return nil
		},
		func() error { _, err := c.Create("/g/later", nil, 0, acl); return err },
		func() error { return c.Delete("/g/missing", -1) },
	}
	for i, s := range steps {
		if err := s(); err != nil && err != zk.ErrNoNode {
			return fmt.Errorf("step %d: %w", i, err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	return nil
}

func kazoo(addr string) error {
	script := `
import sys, time
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl, OPEN_ACL_UNSAFE
zk = KazooClient(hosts=sys.argv[1]); zk.start(timeout=10)
zk.add_auth("digest", "bob:pw")
zk.create("/k", b"v", makepath=True)
zk.create("/k/e-", b"", ephemeral=True, sequence=True)
zk.create("/k/acl", b"p", acl=[make_digest_acl("bob", "pw", all=True)])
zk.get("/k", watch=lambda e: None); zk.get_children("/k", watch=lambda e: None)
zk.exists("/k/none", watch=lambda e: None)
zk.set("/k", b"w"); zk.get_acls("/k/acl"); zk.set_acls("/k/acl", [make_digest_acl("bob", "pw", all=True)])
t = zk.transaction(); t.create("/k/t", b"1"); t.check("/k", 1); t.set_data("/k/t", b"2"); t.delete("/k/t"); t.commit()
zk.sync("/k"); zk.delete("/k/acl")
try: zk.reconfig(joining=None, leaving=None, new_members=None)
except Exception: pass
zk.stop(); zk.close()
`
	cmd := exec.Command("/usr/bin/python3", "-c", script, addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func zkCli(addr string) error {
	cmds := [][]string{
		{"create", "/z", "d"},
		{"create", "-e", "-s", "/z/e-", "x"},
		{"addWatch", "-m", "PERSISTENT_RECURSIVE", "/z"},
		{"getEphemerals", "/"},
		{"getAllChildrenNumber", "/z"},
		{"whoami"},
		{"removewatches", "/z"},
		{"config"},
	}
	script := ""
	for _, c := range cmds {
		script += strings.Join(c, " ") + "\n"
	}
	// Commands on stdin in one session; zkCli reads them without a TTY.
	cmd := exec.Command("/usr/share/zookeeper/bin/zkCli.sh", "-server", addr)
	cmd.Stdin = strings.NewReader(script + "quit\n")
	cmd.Env = append(os.Environ(), "JVMFLAGS=-Xmx128m")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

func cliMT(addr string) error {
	for _, c := range []string{"create /c", "create +es /c/e-", "get /c", "ls2 /c", "ls /c", "set /c x", "sync /c", "delete /c/none"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, "/usr/lib/zookeeper/bin/cli_mt", "-h", addr, "-c", c)
		out, err := cmd.CombinedOutput()
		hung := ctx.Err() != nil
		cancel()
		if hung {
			return fmt.Errorf("%q hung: %s", c, out)
		}
		_ = err // a ZooKeeper error (NONODE) exits 1: still a frame to keep
	}
	return nil
}
