package zkclient

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrBusy means Detach found a request or a ping unanswered: the
// connection is left as it was.
var ErrBusy = errors.New("zkclient: requests in flight")

// Detach ends this client's use of the connection without closing it or
// ending the session, and returns it: the caller speaks the protocol on
// it from there, in the same session (the proxy hands a shadow session's
// connection to the relay that serves the client at a flip, instead of
// resuming the session on a new connection). It refuses with ErrBusy while
// a request or a ping is unanswered (nothing is then mid-frame on the
// connection), and the session must hold no watches (an event arriving
// while the reader stops would be lost). Afterwards the Conn is ended (Done
// closed, Err set); Abandon and Close do nothing more.
func (c *Conn) Detach() (net.Conn, error) {
	c.wmu.Lock() // no request goes out from here on
	c.mu.Lock()
	err, busy := c.err, len(c.calls) > 0 || c.pings.Load() > 0
	c.mu.Unlock()
	if err != nil || busy {
		c.wmu.Unlock()
		if err != nil {
			return nil, err
		}
		return nil, ErrBusy
	}
	c.detaching.Store(true)
	_ = c.conn.SetReadDeadline(time.Now()) // the reader returns
	rerr := <-c.readEnd
	var ne net.Error
	if !errors.As(rerr, &ne) || !ne.Timeout() || c.fr.Buffered() > 0 || c.pings.Load() > 0 {
		c.wmu.Unlock()
		c.fail(rerr) // lost meanwhile, or a frame arrived: closed
		return nil, fmt.Errorf("zkclient: detach: %w", c.Err())
	}
	_ = c.conn.SetReadDeadline(time.Time{})
	c.once.Do(func() {
		c.mu.Lock()
		c.err = fmt.Errorf("%w: detached", ErrClosed)
		c.mu.Unlock()
		close(c.done) // the ping loop ends
	})
	c.wmu.Unlock()
	return c.conn, nil
}
