package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// clientOut is the queue of frames waiting to be written to one client
// connection, and the goroutine (run) that writes them.
//
// Producers (the upstream reader, local answers, the persistent-watch
// catch-up) append under the session's omu and never touch the socket, so a
// client that does not read its replies blocks only this goroutine: no lock
// another goroutine needs is ever held across a client write. The queue is
// bounded: while limit bytes are queued (or being written), the upstream
// reader waits (waitRoom) and stops reading from the server for this
// session only, and readClient stops reading requests. A queue can exceed
// limit by one frame.
type clientOut struct {
	conn  net.Conn
	m     *Metrics
	limit int

	mu     sync.Mutex
	buf    []byte        // frames (with length prefixes) not yet taken by the writer
	spare  []byte        // the writer's last batch, reused
	queued int           // bytes in buf or being written
	dead   bool          // a write failed: the client is gone, frames are dropped
	room   chan struct{} // closed (and replaced) when queued bytes were written

	wake    chan struct{} // 1-buffered: frames to write
	stalled atomic.Bool   // the upstream reader waits for room
}

// maxSpareBuf bounds the write buffer an idle session keeps.
const maxSpareBuf = 32 << 10

func newClientOut(conn net.Conn, m *Metrics, limit int) *clientOut {
	return &clientOut{conn: conn, m: m, limit: limit, room: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// appendFrame queues one frame, adding its length prefix. It never blocks.
func (o *clientOut) appendFrame(frame []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dead {
		return
	}
	n := len(frame)
	o.buf = append(o.buf, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	o.buf = append(o.buf, frame...)
	o.queued += 4 + n
}

// appendRaw queues bytes that already are complete frames.
func (o *clientOut) appendRaw(frames []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dead {
		return
	}
	o.buf = append(o.buf, frames...)
	o.queued += len(frames)
}

// flush asks the writer to send what is queued.
func (o *clientOut) flush() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// full reports whether the queue is at its bound (and the client alive).
func (o *clientOut) full() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.dead && o.queued >= o.limit
}

// waitRoom blocks while the queue is at its bound, until the writer has
// made room, the client is gone or done is closed (then it returns false).
// It reports through stalled that it is waiting.
func (o *clientOut) waitRoom(done <-chan struct{}) bool {
	for {
		o.mu.Lock()
		if o.dead || o.queued < o.limit {
			o.mu.Unlock()
			return true
		}
		room := o.room
		o.mu.Unlock()
		o.flush()
		select {
		case <-room:
		case <-done:
			return false
		}
	}
}

// drain waits until the writer has written everything queued (or the
// client is gone), for at most d: what the client must read before its
// connection is closed, as the reply to its closeSession.
func (o *clientOut) drain(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		o.mu.Lock()
		if o.dead || o.queued == 0 {
			o.mu.Unlock()
			return
		}
		room := o.room
		o.mu.Unlock()
		o.flush()
		select {
		case <-room:
		case <-timer.C:
			return
		}
	}
}

// roomChan returns a channel closed when the writer next makes room.
func (o *clientOut) roomChan() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.room
}

// run writes queued frames until done is closed. A failed write (the client
// is gone or its connection was closed) closes the connection, so the
// session's client reader ends too, and drops everything queued from then on.
func (o *clientOut) run(done <-chan struct{}) {
	for {
		select {
		case <-o.wake:
		case <-done:
			return
		}
		for {
			o.mu.Lock()
			if len(o.buf) == 0 || o.dead {
				o.mu.Unlock()
				break
			}
			batch := o.buf
			o.buf, o.spare = o.spare[:0], nil
			o.mu.Unlock()

			n, err := o.conn.Write(batch)
			o.m.bytesOut.Add(float64(n))

			o.mu.Lock()
			o.queued -= len(batch)
			if cap(batch) <= maxSpareBuf {
				o.spare = batch[:0]
			}
			if err != nil {
				o.dead, o.buf, o.spare, o.queued = true, nil, nil, 0
			}
			close(o.room)
			o.room = make(chan struct{})
			o.mu.Unlock()
			if err != nil {
				_ = o.conn.Close()
			}
		}
	}
}
