package proxy_test

import (
	"bytes"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/proxy/proxytest"
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
// and grew without bound.
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
	conn, _ := rawSession(t, p.Addr, 10000)
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
	if read > maxPending+1 {
		t.Fatalf("the proxy read %.0f requests from a client that reads no replies, want at most the pending cap %d (+1)", read, maxPending)
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
}
