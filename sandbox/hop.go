package sandbox

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// hop is a fault-injecting TCP forwarder in front of one ZooKeeper server
// (after etcd's integration bridge): it can delay every byte by a fixed
// time each way, and partition (close what it carries and hold new
// connections silent, forwarding nothing, until healed). The demo puts a
// hop between each proxy and each server of B.
type hop struct {
	ln     net.Listener
	target string

	mu          sync.Mutex
	delay       time.Duration
	partitioned bool
	conns       map[net.Conn]struct{} // both ends of every carried connection
	held        []net.Conn            // accepted while partitioned
	closed      bool
	wg          sync.WaitGroup // accept loop and copiers
}

// newHop listens on a free loopback port and forwards to target; Close
// stops it.
func newHop(target string) (*hop, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sandbox: hop to %s: %w", target, err)
	}
	h := &hop{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

func (h *hop) addr() string { return h.ln.Addr().String() }

func (h *hop) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			c.Close()
			return
		}
		if h.partitioned {
			h.held = append(h.held, c) // silent: nothing answers
			h.mu.Unlock()
			continue
		}
		h.mu.Unlock()
		up, err := net.DialTimeout("tcp", h.target, 3*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		// Closed or partitioned while dialling: partition and Close have
		// closed what they saw, so this one must not be carried (Close
		// would wait for it for ever).
		h.mu.Lock()
		if h.closed || h.partitioned {
			closed := h.closed
			h.mu.Unlock()
			c.Close()
			up.Close()
			if closed {
				return
			}
			continue
		}
		h.conns[c], h.conns[up] = struct{}{}, struct{}{}
		h.wg.Add(2)
		h.mu.Unlock()
		go h.pipe(up, c)
		go h.pipe(c, up)
	}
}

// pipe copies src to dst, each chunk held for the delay in force when it
// was read, in order; it ends when either side closes.
func (h *hop) pipe(dst, src net.Conn) {
	defer h.wg.Done()
	type chunk struct {
		due time.Time
		b   []byte
	}
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() { // the writer, owned by this pipe
		defer close(done)
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close()
				for range q { // drain until the reader ends
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			h.mu.Lock()
			d := h.delay
			h.mu.Unlock()
			q <- chunk{due: time.Now().Add(d), b: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
	dst.Close()
	src.Close()
	h.mu.Lock()
	delete(h.conns, src)
	delete(h.conns, dst)
	h.mu.Unlock()
}

// setDelay delays every byte read from now on by d, each way.
func (h *hop) setDelay(d time.Duration) {
	h.mu.Lock()
	h.delay = d
	h.mu.Unlock()
}

// partition closes every carried connection and holds new ones silent
// until heal.
func (h *hop) partition() {
	h.mu.Lock()
	h.partitioned = true
	var cs []net.Conn
	for c := range h.conns {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// heal forwards again; the connections held meanwhile are closed (their
// clients dial again).
func (h *hop) heal() {
	h.mu.Lock()
	h.partitioned = false
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, c := range held {
		c.Close()
	}
}

// Close stops the hop and every connection it carries.
func (h *hop) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.ln.Close()
	h.partition()
	h.heal()
	h.wg.Wait()
}
