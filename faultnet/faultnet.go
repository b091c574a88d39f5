// Package faultnet is a fault-injecting TCP hop for chaos tests and the
// demo: a relay between clients and one upstream address (a ZooKeeper
// server) whose faults are switched at run time. It models what a network
// does to a TCP connection, not what a process does: a delay holds every
// byte for that long in each direction, in order; a partition stops every
// byte in both directions (connections stay open, as across a real
// partition, and what was sent arrives once it heals, as TCP retransmits
// it), and new connections get nowhere; Reset closes every open connection
// at once.
//
// Usage:
//
//	hop, err := faultnet.Listen("127.0.0.1:0", server)
//	defer hop.Close()
//	hop.SetDelay(50 * time.Millisecond) // B is 50 ms away
//	hop.Partition(true)                 // and now unreachable
package faultnet

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Hop relays connections from its listener to Upstream with the faults set.
type Hop struct {
	ln       net.Listener
	upstream string

	mu          sync.Mutex
	delay       time.Duration
	partitioned bool
	healed      chan struct{} // closed when a partition heals
	conns       map[*pipe]struct{}
	closed      bool
	wg          sync.WaitGroup
}

// Listen starts a hop on addr ("127.0.0.1:0" for any port) to upstream.
func Listen(addr, upstream string) (*Hop, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen on %s: %w", addr, err)
	}
	h := &Hop{ln: ln, upstream: upstream, conns: map[*pipe]struct{}{}, healed: make(chan struct{})}
	close(h.healed)
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

// Addr is the address clients dial instead of the upstream.
func (h *Hop) Addr() string { return h.ln.Addr().String() }

// SetDelay makes every byte take d longer in each direction (0: none).
func (h *Hop) SetDelay(d time.Duration) {
	h.mu.Lock()
	h.delay = d
	h.mu.Unlock()
}

// Partition stops (true) or resumes (false) all traffic through the hop.
func (h *Hop) Partition(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on == h.partitioned {
		return
	}
	h.partitioned = on
	if on {
		h.healed = make(chan struct{})
	} else {
		close(h.healed)
	}
}

// Reset closes every connection open through the hop.
func (h *Hop) Reset() {
	h.mu.Lock()
	ps := make([]*pipe, 0, len(h.conns))
	for p := range h.conns {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	for _, p := range ps {
		p.close()
	}
}

// Close stops the hop and closes its connections; it waits for its
// goroutines.
func (h *Hop) Close() error {
	h.mu.Lock()
	h.closed = true
	if h.partitioned {
		h.partitioned = false
		close(h.healed)
	}
	h.mu.Unlock()
	err := h.ln.Close()
	h.Reset()
	h.wg.Wait()
	return err
}

// gate blocks while the hop is partitioned; it returns false when done
// closes first.
func (h *Hop) gate(done <-chan struct{}) bool {
	h.mu.Lock()
	healed := h.healed
	h.mu.Unlock()
	select {
	case <-healed:
		return true
	case <-done:
		return false
	}
}

func (h *Hop) currentDelay() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.delay
}

func (h *Hop) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		p := &pipe{client: c, done: make(chan struct{})}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			c.Close()
			return
		}
		h.conns[p] = struct{}{}
		h.mu.Unlock()
		h.wg.Add(1)
		go h.serve(p)
	}
}

// pipe is one relayed connection.
type pipe struct {
	client   net.Conn
	upstream net.Conn
	once     sync.Once
	mu       sync.Mutex
	done     chan struct{}
}

func (p *pipe) close() {
	p.once.Do(func() {
		close(p.done)
		p.client.Close()
		p.mu.Lock()
		if p.upstream != nil {
			p.upstream.Close()
		}
		p.mu.Unlock()
	})
}

func (h *Hop) serve(p *pipe) {
	defer h.wg.Done()
	defer func() {
		p.close()
		h.mu.Lock()
		delete(h.conns, p)
		h.mu.Unlock()
	}()
	// A partitioned hop connects nowhere: the client waits, as for a SYN
	// that gets no answer, until it gives up or the partition heals.
	if !h.gate(p.done) {
		return
	}
	u, err := net.DialTimeout("tcp", h.upstream, 5*time.Second)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.upstream = u
	p.mu.Unlock()
	select {
	case <-p.done: // closed while dialing
		u.Close()
		return
	default:
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.relay(p, u, p.client) }()
	go func() { defer wg.Done(); h.relay(p, p.client, u) }()
	wg.Wait()
}

// chunk is bytes read at a time, due for delivery at due.
type chunk struct {
	b   []byte
	due time.Time
}

// relay copies src to dst, each chunk held back by the delay and while the
// hop is partitioned, in order. Either side ending ends the pipe.
func (h *Hop) relay(p *pipe, dst, src net.Conn) {
	q := make(chan chunk, 64)
	read := make(chan struct{})
	go func() { // ends when src fails: p.close closes it
		defer close(read)
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case q <- chunk{buf[:n], time.Now().Add(h.currentDelay())}:
				case <-p.done:
					return
				}
			}
			if err != nil {
				return // EOF, a reset or a closed pipe: the pipe ends
			}
		}
	}()
	defer func() { p.close(); <-read }()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-p.done:
				t.Stop()
				return
			}
		}
		if !h.gate(p.done) {
			return
		}
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}
