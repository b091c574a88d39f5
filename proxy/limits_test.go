package proxy_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// The tests in this file play hostile or broken clients against the proxy's
// per-session and per-connection bounds, each while a well-behaved client
// keeps being served.

func startProxyWith(t *testing.T, cfg proxy.Config) *proxytest.Proxy {
	t.Helper()
	cfg.Upstream = ens.Addrs()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	p, err := proxytest.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// rawSession opens a session over a bare TCP connection and returns the
// connection and its frame reader.
func rawSession(t *testing.T, addr string, timeoutMs int32) (net.Conn, *jute.FrameReader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fr := jute.NewFrameReader(bufioReader(conn), 16<<20)
	cr := jute.ConnectRequest{TimeOut: timeoutMs, Passwd: make([]byte, 16)}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(jute.AppendFrame(nil, jute.Marshal(&cr))); err != nil {
		t.Fatal(err)
	}
	if _, err := fr.Next(); err != nil {
		t.Fatalf("connect response: %v", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, fr
}

func requestFrame(xid int32, op jute.Op, body interface{ Encode(*jute.Encoder) }) []byte {
	var e jute.Encoder
	(&jute.RequestHeader{Xid: xid, Type: int32(op)}).Encode(&e)
	body.Encode(&e)
	return jute.AppendFrame(nil, e.Bytes())
}

// heapInUse is the live heap of this process (the in-process proxy and the
// test) after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// waitStable waits until f returns the same value twice 300 ms apart.
func waitStable(f func() float64) float64 {
	last := f()
	for i := 0; i < 50; i++ {
		time.Sleep(300 * time.Millisecond)
		v := f()
		if v == last {
			return v
		}
		last = v
	}
	return last
}

// TestClientThatNeverReadsIsBounded pipelines getData of a 900 KB node on a
// raw connection that never reads its replies. The proxy must stop reading
// that client at its pending-request cap and stop reading the server's
// replies once --max-client-backlog bytes wait for the client: its heap
// stays within the bound, and a well-behaved client on the same proxy is
// served meanwhile. Before, the proxy read every request (226,000 in 3 s)
// and grew without bound. Its session then expires (6 s of silence).
func TestClientThatNeverReadsIsBounded(t *testing.T) {
	root := testRoot(t)
	big := bytes.Repeat([]byte("x"), 900<<10)
	direct := directConn(t)
	node := root + "/big"
	if _, err := direct.Create(node, big, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	// A small pending cap keeps what the server itself must hold for the
	// unread replies small (the servers run with a 256 MB heap); the reply
	// backlog is the default.
	const maxPending = 20
	p := startProxyWith(t, proxy.Config{MaxPending: maxPending})
	good, _ := connect(t, []string{p.Addr}, 10*time.Second)
	conn, _ := rawSession(t, p.Addr, 6000)
	_ = conn.(*net.TCPConn).SetReadBuffer(4096) // the kernel holds little of what it never reads
	getData := func() float64 {
		return metricValue(t, p.Registry, "zkmigrate_proxy_requests_total", "op", "getData")
	}
	before := heapInUse()

	const sent = 20000
	writeDone := make(chan int, 1)
	go func() {
		var batch []byte
		n := 0
		for xid := int32(1); xid <= sent; xid++ {
			batch = append(batch, requestFrame(xid, jute.OpGetData, &jute.GetDataRequest{Path: node})...)
			if xid%500 == 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
				if _, err := conn.Write(batch); err != nil {
					break
				}
				n = int(xid)
				batch = batch[:0]
			}
		}
		writeDone <- n
	}()
	read := waitStable(getData)
	stalls := func() float64 {
		return metricValue(t, p.Registry, "zkmigrate_proxy_backpressure_waits_total", "side", "upstream", "reason", "client_backlog")
	}
	for deadline := time.Now().Add(20 * time.Second); stalls() < 1 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	after := heapInUse()
	written := <-writeDone
	growth := int64(after) - int64(before)
	t.Logf("client wrote %d of %d getData requests; the proxy read %.0f; heap %.1f MB -> %.1f MB (growth %.1f MB)",
		written, sent, read, float64(before)/(1<<20), float64(after)/(1<<20), float64(growth)/(1<<20))
	// Requests in flight (the pending cap) plus those whose replies left the
	// queue for the client: at most the 2 MiB reply backlog and what the
	// kernel's socket buffers took (a few MB), each reply 900 KB.
	if limit := float64(maxPending + 10); read > limit {
		t.Fatalf("the proxy read %.0f requests from a client that reads no replies, want at most the pending cap %d plus the replies its backlog and socket hold (%v)", read, maxPending, limit)
	}
	// The bound: the reply backlog (2 MiB) plus one frame it may pass by,
	// the upstream frame buffer, and slack for the test's own clients.
	if limit := int64(8 << 20); growth > limit {
		t.Fatalf("heap grew %.1f MB with one client not reading, want under %d MB", float64(growth)/(1<<20), limit>>20)
	}
	if v := stalls(); v < 1 {
		t.Fatalf("backpressure_waits_total{side=upstream} = %v, want the upstream reader to have waited", v)
	}
	start := time.Now()
	data, _, err := good.Get(node)
	if err != nil || len(data) != len(big) {
		t.Fatalf("well-behaved client: get %d bytes, %v", len(data), err)
	}
	if _, err := good.Create(root+"/fine", nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("well-behaved client: %v", err)
	}
	t.Logf("well-behaved client served in %v beside the stalled one", time.Since(start).Round(time.Millisecond))
	// The stalled client is heard from no more (the proxy stopped reading
	// it), so its session expires like any silent one: the supervisor is
	// never blocked behind a write to a client that does not read.
	for deadline := time.Now().Add(30 * time.Second); metricValue(t, p.Registry, "zkmigrate_proxy_sessions_expired_total") < 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the session of a client that never reads did not expire within 30 s (6 s timeout)")
		}
	}
	if _, _, err := good.Exists("/"); err != nil {
		t.Fatalf("well-behaved client after the stalled session expired: %v", err)
	}
}

// readReplies reads n reply frames from fr and counts them by error code.
func readReplies(t *testing.T, conn net.Conn, fr *jute.FrameReader, n int) map[jute.Code]int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	defer func() { _ = conn.SetReadDeadline(time.Time{}) }()
	codes := map[jute.Code]int{}
	for i := 0; i < n; i++ {
		frame, err := fr.Next()
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, n, err)
		}
		var h jute.ReplyHeader
		if err := h.Decode(jute.NewDecoder(frame)); err != nil {
			t.Fatal(err)
		}
		codes[jute.Code(h.Err)]++
	}
	return codes
}

// TestCredentialsPerSessionAreCapped sends 10,000 distinct digest
// credentials of 1,000 bytes on one session: the proxy keeps each to replay
// after a move, so it must hold at most --max-credentials (16) of them and
// answer the rest AUTHFAILED with a log line; a credential held already is
// accepted again. Before, every one was kept (the issue saw 112 MB of heap
// for 100,000) until the session closed.
func TestCredentialsPerSessionAreCapped(t *testing.T) {
	lines := &lineCounter{}
	p := startProxyWith(t, proxy.Config{Logger: lines.logger()})
	good, _ := connect(t, []string{p.Addr}, 10*time.Second)
	conn, fr := rawSession(t, p.Addr, 10000)
	before := heapInUse()
	const n = 10000
	cred := func(i int) []byte {
		return append([]byte(fmt.Sprintf("user%05d:", i)), bytes.Repeat([]byte("p"), 1000-10)...)
	}
	go func() {
		var batch []byte
		for i := 0; i < n; i++ {
			batch = append(batch, requestFrame(jute.XidAuth, jute.OpAuth, &jute.AuthPacket{Scheme: "digest", Auth: cred(i)})...)
			if len(batch) > 256<<10 || i == n-1 {
				if _, err := conn.Write(batch); err != nil {
					return
				}
				batch = batch[:0]
			}
		}
	}()
	codes := readReplies(t, conn, fr, n)
	after := heapInUse()
	growth := int64(after) - int64(before)
	t.Logf("%d addAuth: %d OK, %d AUTHFAILED; heap %.1f MB -> %.1f MB (growth %.2f MB); %d log lines",
		n, codes[jute.CodeOK], codes[jute.CodeAuthFailed], float64(before)/(1<<20), float64(after)/(1<<20), float64(growth)/(1<<20), lines.count("refused addAuth"))
	if codes[jute.CodeOK] != 16 || codes[jute.CodeAuthFailed] != n-16 {
		t.Fatalf("addAuth answers %v, want 16 OK (the cap) and %d AUTHFAILED", codes, n-16)
	}
	if limit := int64(2 << 20); growth > limit {
		t.Fatalf("heap grew %.1f MB holding credentials, want under %d MB", float64(growth)/(1<<20), limit>>20)
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_credentials_refused_total"); got != n-16 {
		t.Fatalf("credentials_refused_total = %v, want %d", got, n-16)
	}
	if got := lines.count("refused addAuth"); got < 1 || got > 10 {
		t.Fatalf("%d log lines for refused credentials, want 1 to 10 (rate-limited)", got)
	}
	// A credential the session holds is accepted again, and the session works.
	_, _ = conn.Write(requestFrame(jute.XidAuth, jute.OpAuth, &jute.AuthPacket{Scheme: "digest", Auth: cred(3)}))
	_, _ = conn.Write(requestFrame(1, jute.OpExists, &jute.ExistsRequest{Path: "/"}))
	if codes := readReplies(t, conn, fr, 2); codes[jute.CodeOK] != 2 {
		t.Fatalf("held credential again, then exists: %v, want both OK", codes)
	}
	if _, _, err := good.Exists("/"); err != nil {
		t.Fatalf("well-behaved client: %v", err)
	}
}

// TestConnectionLimitsAndHandshakeDeadline opens connections that never
// send a ConnectRequest (or only part of a frame): beyond the per-address
// and total caps they are refused at once, and the ones admitted are
// closed after the handshake deadline, so they can never lock out new
// clients. A well-behaved session, older than the deadline, is untouched.
func TestConnectionLimitsAndHandshakeDeadline(t *testing.T) {
	p := startProxyWith(t, proxy.Config{MaxConnections: 20, MaxConnectionsPerIP: 10, HandshakeTimeout: 2 * time.Second})
	good, _ := connect(t, []string{p.Addr}, 10*time.Second) // one of 127.0.0.1's ten
	before := heapInUse()
	dialFrom := func(ip string, n int) []net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		var out []net.Conn
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp", p.Addr)
			if err != nil {
				t.Fatalf("dial from %s: %v", ip, err)
			}
			t.Cleanup(func() { c.Close() })
			out = append(out, c)
		}
		return out
	}
	silent := dialFrom("127.0.0.1", 200)
	_, _ = silent[0].Write([]byte{0, 0}) // half a length prefix
	dialFrom("127.0.0.2", 10)
	dialFrom("127.0.0.3", 5)
	conns := func() float64 { return metricValue(t, p.Registry, "zkmigrate_proxy_client_connections") }
	refused := func(reason string) float64 {
		return metricValue(t, p.Registry, "zkmigrate_proxy_client_connections_refused_total", "reason", reason)
	}
	waitFor := func(what string, f func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !f(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: connections %v, refused per-ip %v, total %v, handshake %v", what, conns(),
					refused("max_connections_per_ip"), refused("max_connections"), refused("handshake_timeout"))
			}
		}
	}
	waitFor("caps", func() bool {
		return refused("max_connections_per_ip") == 191 && refused("max_connections") == 5
	})
	if got := conns(); got != 20 {
		t.Fatalf("client_connections = %v while capped, want 20", got)
	}
	held := heapInUse()
	waitFor("handshake deadline", func() bool { return conns() == 1 && refused("handshake_timeout") == 19 })
	t.Logf("215 connection attempts: 20 admitted, 196 refused, 19 closed at the handshake deadline; heap %.1f MB -> %.1f MB while held",
		float64(before)/(1<<20), float64(held)/(1<<20))
	if growth := int64(held) - int64(before); growth > 4<<20 {
		t.Fatalf("heap grew %.1f MB for 20 idle connections", float64(growth)/(1<<20))
	}
	if _, _, err := good.Exists("/"); err != nil {
		t.Fatalf("well-behaved session after the handshake deadline passed: %v", err)
	}
	if good.State() != zk.StateHasSession {
		t.Fatalf("well-behaved session state %v", good.State())
	}
	rawSession(t, p.Addr, 10000) // there is room again
}

// TestLogsAreRateLimitedPerSession pipelines 20,000 unknown opcodes on one
// session: each is answered UNIMPLEMENTED, but at most logBurst (10) WARN
// lines are written for the reason, the rest counted as dropped. Before,
// every request logged a line (147 MB in 5 s).
func TestLogsAreRateLimitedPerSession(t *testing.T) {
	lines := &lineCounter{}
	p := startProxyWith(t, proxy.Config{Logger: lines.logger()})
	good, _ := connect(t, []string{p.Addr}, 10*time.Second)
	conn, fr := rawSession(t, p.Addr, 10000)
	const n = 20000
	go func() {
		var batch []byte
		for i := 1; i <= n; i++ {
			batch = append(batch, requestFrame(int32(i), jute.Op(999), &jute.Empty{})...)
		}
		_, _ = conn.Write(batch)
	}()
	codes := readReplies(t, conn, fr, n)
	if codes[jute.CodeUnimplemented] != n {
		t.Fatalf("answers %v, want %d UNIMPLEMENTED", codes, n)
	}
	got := lines.count("unknown opcode")
	dropped := metricValue(t, p.Registry, "zkmigrate_proxy_log_lines_dropped_total", "reason", "unknown_opcode")
	t.Logf("%d unknown opcodes: %d log lines (%d bytes in all), %.0f dropped", n, got, lines.bytes(), dropped)
	if got != 10 || dropped != n-10 {
		t.Fatalf("%d log lines and %.0f dropped for %d unknown opcodes, want 10 and %d", got, dropped, n, n-10)
	}
	if _, _, err := good.Exists("/"); err != nil {
		t.Fatalf("well-behaved client: %v", err)
	}
}

// TestFourLetterWordAllowlist: by default the words that expose other
// clients (dump, cons, wchp, wchc) are refused with ZooKeeper's own answer;
// the allowlist can open them.
func TestFourLetterWordAllowlist(t *testing.T) {
	p := startProxy(t)
	for _, w := range []string{"dump", "cons", "wchp", "wchc", "conf"} {
		out, err := zktest.FourLetterWord(p.Addr, w, 5*time.Second)
		if want := w + " is not executed because it is not in the whitelist."; err != nil || strings.TrimSpace(out) != want {
			t.Fatalf("%s = %q, %v; want %q", w, out, err, want)
		}
	}
	if got := metricValue(t, p.Registry, "zkmigrate_proxy_four_letter_words_refused_total", "word", "dump"); got != 1 {
		t.Fatalf("four_letter_words_refused_total{dump} = %v", got)
	}
	open := startProxyWith(t, proxy.Config{FourLetterWords: []string{"*"}})
	out, err := zktest.FourLetterWord(open.Addr, "dump", 5*time.Second)
	if err != nil || out == "" || strings.Contains(out, "whitelist") {
		t.Fatalf("dump with * allowed = %q, %v", out, err)
	}
	if _, err := proxy.New(proxy.Config{Upstream: ens.Addrs(), FourLetterWords: []string{"ruok", "rm -rf"}}); err == nil {
		t.Fatal("an unknown four-letter word was accepted in the allowlist")
	}
}

// lineCounter is a log destination that counts lines by message.
type lineCounter struct {
	mu    sync.Mutex
	msgs  []string
	total int
}

func (l *lineCounter) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func (l *lineCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, string(p))
	l.total += len(p)
	return len(p), nil
}

func (l *lineCounter) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func (l *lineCounter) bytes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// TestPipelineBeyondMaxPendingFlowsWithoutPings pipelines many more reads
// than --max-pending in one write and then waits, sending nothing else
// (no ping): the proxy must send the requests it holds to the server
// before it stops reading the client, or the session sits idle until the
// proxy's own ping flushes them (a third of the session timeout, 10 s here,
// for every max-pending requests: the issue measured 100 s for 50 reads).
func TestPipelineBeyondMaxPendingFlowsWithoutPings(t *testing.T) {
	p := startProxyWith(t, proxy.Config{MaxPending: 2})
	conn, fr := rawSession(t, p.Addr, 30000)
	const n = 50
	var batch []byte
	for i := 1; i <= n; i++ {
		batch = append(batch, requestFrame(int32(i), jute.OpExists, &jute.ExistsRequest{Path: "/"})...)
	}
	if _, err := conn.Write(batch); err != nil {
		t.Fatal(err)
	}
	// Well under the 10 s after which the proxy's own ping would flush a
	// stalled batch; healthy, 50 reads take milliseconds.
	_ = conn.SetReadDeadline(time.Now().Add(8 * time.Second))
	for i := 1; i <= n; i++ {
		frame, err := fr.Next()
		if err != nil {
			t.Fatalf("reply %d of %d never came (requests held unflushed at --max-pending?): %v", i, n, err)
		}
		var h jute.ReplyHeader
		if err := h.Decode(jute.NewDecoder(frame)); err != nil || h.Xid != int32(i) || h.Err != 0 {
			t.Fatalf("reply %d: %+v %v", i, h, err)
		}
	}
}
