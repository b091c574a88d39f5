// Package bench measures the proxy against going directly to ZooKeeper, in
// the same run and against the same server, so that the ratio holds on a
// machine whose CPU the ensemble shares.
//
// The bodies here are shared by every comparison: a synchronous latency
// sampler that alternates operations between two targets, and a pipelined
// throughput window. `make bench` runs them (bench_test.go) and prints a
// table with both figures and the ratio.
package bench

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
)

// Target is one way of reaching the ensemble.
type Target struct {
	Name string
	Addr string
}

// Op is one synchronous ZooKeeper operation on a connection.
type Op func(c *zk.Conn) error

// Connect opens a session to addr and waits until it is established.
func Connect(addr string) (*zk.Conn, error) {
	c, ev, err := zk.Connect([]string{addr}, 10*time.Second, zk.WithLogInfo(false))
	if err != nil {
		return nil, err
	}
	deadline := time.After(15 * time.Second)
	for c.State() != zk.StateHasSession {
		select {
		case <-ev:
		case <-deadline:
			c.Close()
			return nil, fmt.Errorf("bench: no session with %s", addr)
		}
	}
	return c, nil
}

// Latencies holds sorted samples.
type Latencies []time.Duration

// Quantile returns the q-quantile (0..1) of the sorted samples.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(q * float64(len(l)-1))
	return l[i]
}

// AlternatingLatency runs op n times on each connection, alternating between
// them so both see the same machine load, and returns sorted samples.
func AlternatingLatency(conns []*zk.Conn, op Op, n int) ([]Latencies, error) {
	out := make([]Latencies, len(conns))
	for i := 0; i < n; i++ {
		for j, c := range conns {
			start := time.Now()
			if err := op(c); err != nil {
				return nil, fmt.Errorf("bench: sample %d on connection %d: %w", i, j, err)
			}
			out[j] = append(out[j], time.Since(start))
		}
	}
	for _, l := range out {
		sort.Slice(l, func(a, b int) bool { return l[a] < l[b] })
	}
	return out, nil
}

// Pipelined keeps inflight requests outstanding on each connection for d
// and returns completed operations per second.
func Pipelined(conns []*zk.Conn, inflight int, op Op, d time.Duration) (float64, error) {
	var done atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, c := range conns {
		for k := 0; k < inflight; k++ {
			wg.Add(1)
			go func(c *zk.Conn) {
				defer wg.Done()
				for time.Now().Before(stop) {
					if err := op(c); err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					done.Add(1)
				}
			}(c)
		}
	}
	start := time.Now()
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("bench: pipelined op: %w", err)
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// RSSBytes reads a process's resident set size from /proc.
func RSSBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("bench: no VmRSS for pid %d", pid)
}
