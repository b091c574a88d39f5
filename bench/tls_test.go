package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TLS figures: one ZooKeeper server (Netty) serving a plaintext clientPort
// and a secureClientPort (mutual TLS) at once, reached four ways in the
// same run: directly in plaintext, directly over TLS, through a proxy in
// plaintext on both sides, and through a proxy speaking TLS on both sides
// (client port with mutual TLS, TLS with a client certificate to the
// server's secureClientPort). Each client holds one long-lived connection,
// so the figures are the cost of encryption per request, not of
// handshakes.

var (
	tlsEns                          *zktest.Ensemble
	tlsDirectPlain, tlsDirectSecure string
	tlsProxyPlain, tlsProxySecure   string
	tlsClient                       func(string) *tls.Config
	tlsRows                         = map[string][]string{}
	tlsOrder                        []string
)

func recordTLS(name string, cols ...string) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if _, ok := tlsRows[name]; !ok {
		tlsOrder = append(tlsOrder, name)
	}
	tlsRows[name] = cols
}

// startTLS starts the one-server TLS ensemble and the two proxies.
func startTLS(bin string) (func(), error) {
	dir, err := os.MkdirTemp("", "zkm-bench-tls-")
	if err != nil {
		return nil, err
	}
	m, err := zktest.MakeTLS(dir)
	if err != nil {
		return nil, err
	}
	tlsClient = m.Client.ClientConfig
	tlsDirectPlain = freeAddr()
	_, port, _ := net.SplitHostPort(tlsDirectPlain)
	tlsEns, err = zktest.Start(context.Background(), zktest.Config{Servers: 1, Name: "bench-tls", TLS: m.Server,
		ExtraConfig: []string{"clientPort=" + port, "clientPortAddress=127.0.0.1"}})
	if err != nil {
		return nil, err
	}
	tlsDirectSecure = tlsEns.Server(1).Addr()
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		tlsEns.Close()
		os.RemoveAll(dir)
	}
	tlsProxyPlain, tlsProxySecure = freeAddr(), freeAddr()
	for _, args := range [][]string{
		{"--listen", tlsProxyPlain, "--upstream", tlsDirectPlain},
		{"--listen", "", "--secure-listen", tlsProxySecure, "--upstream", tlsDirectSecure,
			"--client-tls-cert", filepath.Join(dir, "zk-server.pem"), "--client-tls-key", filepath.Join(dir, "zk-server-key.pem"), "--client-tls-ca", m.CA,
			"--zk-tls-ca", m.CA, "--zk-tls-cert", m.ClientCert, "--zk-tls-key", m.ClientKey},
	} {
		cmd := exec.Command(bin, append([]string{"proxy", "--metrics-addr", "", "--log-level", "warn"}, args...)...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			stop()
			return nil, err
		}
		cmds = append(cmds, cmd)
	}
	for i := 0; ; i++ {
		a, errA := zktest.FourLetterWord(tlsProxyPlain, "ruok", time.Second)
		b, errB := zkclient.FourLetterWordTLS(tlsProxySecure, "ruok", time.Second, tlsClient("127.0.0.1"))
		if errA == nil && errB == nil && a == "imok" && b == "imok" {
			return stop, nil
		}
		if i > 100 {
			stop()
			return nil, fmt.Errorf("TLS bench proxies did not start: %v, %v", errA, errB)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ConnectTLS is Connect over TLS with cfg.
func ConnectTLS(addr string, cfg *tls.Config) (*zk.Conn, error) {
	dialer := func(network, address string, d time.Duration) (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: d}, network, address, cfg)
	}
	c, ev, err := zk.Connect([]string{addr}, 10*time.Second, zk.WithLogInfo(false), zk.WithDialer(dialer))
	if err != nil {
		return nil, err
	}
	deadline := time.After(15 * time.Second)
	for c.State() != zk.StateHasSession {
		select {
		case <-ev:
		case <-deadline:
			c.Close()
			return nil, fmt.Errorf("bench: no TLS session with %s", addr)
		}
	}
	return c, nil
}

// tlsPaths opens one session each: direct plaintext, direct TLS, proxy
// plaintext, proxy TLS on both sides.
func tlsPaths(b *testing.B) []*zk.Conn {
	b.Helper()
	var out []*zk.Conn
	for i, a := range []string{tlsDirectPlain, tlsDirectSecure, tlsProxyPlain, tlsProxySecure} {
		var c *zk.Conn
		var err error
		if i%2 == 1 {
			c, err = ConnectTLS(a, tlsClient("127.0.0.1"))
		} else {
			c, err = Connect(a)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		out = append(out, c)
	}
	return out
}

func benchTLSLatency(b *testing.B, name string, samples int, op Op) {
	conns := tlsPaths(b)
	ensureNode(b, conns[0], "/bench-tls", 100)
	for i := 0; i < 200; i++ {
		for _, c := range conns {
			_ = op(c)
		}
	}
	b.ResetTimer()
	lat, err := AlternatingLatency(conns, op, samples)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	for _, q := range []struct {
		label string
		q     float64
	}{{"p50", 0.50}, {"p99", 0.99}} {
		var cols []string
		for i, l := range lat {
			v := l.Quantile(q.q)
			b.ReportMetric(float64(v)/1e3, []string{"direct", "direct-tls", "proxy", "proxy-tls"}[i]+"-"+q.label+"-µs")
			cols = append(cols, us(v))
		}
		cols = append(cols, fmt.Sprintf("%+.0f µs", float64(lat[3].Quantile(q.q)-lat[2].Quantile(q.q))/1e3))
		recordTLS(name+" "+q.label, cols...)
	}
}

func BenchmarkTLSGetDataLatency(b *testing.B) {
	benchTLSLatency(b, "getData latency", 4000, func(c *zk.Conn) error {
		_, _, err := c.Get("/bench-tls")
		return err
	})
}

func BenchmarkTLSSetDataLatency(b *testing.B) {
	data := make([]byte, 100)
	benchTLSLatency(b, "setData latency", 2000, func(c *zk.Conn) error {
		_, err := c.Set("/bench-tls", data, -1)
		return err
	})
}

func BenchmarkTLSPipelinedSetData(b *testing.B) {
	const conns, inflight, rounds = 4, 32, 3
	window := 2 * time.Second
	var sets [4][]*zk.Conn
	for i := 0; i < conns; i++ {
		p := tlsPaths(b)
		for j := range sets {
			sets[j] = append(sets[j], p[j])
		}
	}
	ensureNode(b, sets[0][0], "/bench-tls-tput", 100)
	data := make([]byte, 100)
	op := func(c *zk.Conn) error {
		_, err := c.Set("/bench-tls-tput", data, -1)
		return err
	}
	b.ResetTimer()
	var rate [4]float64
	for r := 0; r < rounds; r++ {
		for i := range sets {
			v, err := Pipelined(sets[i], inflight, op, window)
			if err != nil {
				b.Fatal(err)
			}
			rate[i] += v / rounds
		}
	}
	b.StopTimer()
	var cols []string
	for i, v := range rate {
		b.ReportMetric(v, []string{"direct", "direct-tls", "proxy", "proxy-tls"}[i]+"-ops/s")
		cols = append(cols, fmt.Sprintf("%.0f/s", v))
	}
	recordTLS("pipelined setData (4x32)", append(cols, fmt.Sprintf("%.3fx", rate[3]/rate[2]))...)
}

func printTLSTable() {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(tlsOrder) == 0 {
		return
	}
	fmt.Printf("\nTLS: direct vs proxy, plaintext vs TLS on both sides (one Netty server serving both ports, same run; %d CPUs)\n", runtime.NumCPU())
	fmt.Printf("%-28s %12s %12s %12s %12s %16s\n", "measure", "direct", "direct TLS", "proxy", "proxy TLS", "TLS proxy vs proxy")
	for _, name := range tlsOrder {
		c := tlsRows[name]
		fmt.Printf("%-28s %12s %12s %12s %12s %16s\n", name, c[0], c[1], c[2], c[3], c[4])
	}
}
