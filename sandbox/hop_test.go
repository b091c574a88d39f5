package sandbox

import (
	"bufio"
	"net"
	"sync"
	"testing"
	"time"
)

// TestHopDelaysPartitionsAndHeals: the chaos hop delays each byte by at
// least the delay each way, a partition closes what it carries and leaves
// a new connection unanswered, and after heal a new connection works.
func TestHopDelaysPartitionsAndHeals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // echo server, ends with ln
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	h, err := newHop(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	echo := func(c net.Conn) (time.Duration, error) {
		start := time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return 0, err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ping\n" {
			t.Fatalf("echo %q", line)
		}
		return time.Since(start), err
	}
	c, err := net.Dial("tcp", h.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := echo(c); err != nil {
		t.Fatal(err)
	}
	h.setDelay(30 * time.Millisecond)
	if took, err := echo(c); err != nil || took < 60*time.Millisecond {
		t.Fatalf("with a 30 ms delay each way the round trip took %v (err %v); want at least 60 ms", took, err)
	}
	h.setDelay(0)
	h.partition()
	if _, err := echo(c); err == nil {
		t.Fatal("a connection carried through the partition")
	}
	held, err := net.Dial("tcp", h.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := echo(held); err == nil {
		t.Fatal("a connection made during the partition was answered")
	}
	h.heal()
	c2, err := net.Dial("tcp", h.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := echo(c2); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}

// TestHopCloseEndsConnectionsAcceptedMeanwhile: a connection the hop
// accepts while it closes (a proxy re-attaching to B as the demo ends) is
// closed too, and Close returns. Before, one accepted between the closed
// check and its registration was carried on, and Close waited for it for
// ever: the chaos demo hung in its cleanup with every process alive.
func TestHopCloseEndsConnectionsAcceptedMeanwhile(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var held []net.Conn // the target holds what it accepts open
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	go func() { // ends with ln
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	for i := 0; i < 30; i++ {
		h, err := newHop(ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		dialled := make(chan []net.Conn)
		go func() { // a client dialling again and again, holding its connections open
			var cs []net.Conn
			defer func() { dialled <- cs }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := net.Dial("tcp", h.addr()); err == nil {
					cs = append(cs, c)
				}
			}
		}()
		time.Sleep(time.Duration(1+i%5) * time.Millisecond)
		closed := make(chan struct{})
		go func() { h.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: the hop's Close did not return with its clients' connections open", i)
		}
		close(stop)
		for _, c := range <-dialled {
			c.Close()
		}
	}
}
