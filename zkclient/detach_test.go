package zkclient_test

import (
	"bufio"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
	"github.com/zk-migrate/zk-migrate/zktest"
)

// TestDetachHandsOverTheSession: after Detach the Conn is ended, but its
// connection and session are not: a request written on the returned
// connection is answered in the session (the proxy's relay takes a shadow
// session's connection over this way at a flip). Closing the Conn then
// does not end the session: the connection still serves.
func TestDetachHandsOverTheSession(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ens, err := zktest.Start(ctx, zktest.Config{Servers: 1, Name: "zkclient-detach"})
	if err != nil {
		t.Fatal(err)
	}
	defer ens.Close()
	c, err := zkclient.Dial(ctx, ens.Addrs(), zkclient.Options{SessionTimeout: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, "/detach", []byte("x"), zkclient.OpenACL, jute.FlagEphemeral); err != nil {
		t.Fatal(err)
	}
	conn, err := c.Detach()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case <-c.Done():
	default:
		t.Fatal("the Conn is not ended after Detach")
	}
	if _, err := c.Exists(ctx, "/detach"); !errors.Is(err, zkclient.ErrClosed) {
		t.Fatalf("a request on the detached Conn: %v, want ErrClosed", err)
	}
	_ = c.Close() // must not end the session

	var e jute.Encoder
	off := e.StartFrame()
	(&jute.RequestHeader{Xid: 7, Type: int32(jute.OpExists)}).Encode(&e)
	(&jute.ExistsRequest{Path: "/detach"}).Encode(&e)
	e.FinishFrame(off)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(e.Bytes()); err != nil {
		t.Fatal(err)
	}
	frame, err := jute.NewFrameReader(bufio.NewReader(conn), 1<<20).Next()
	if err != nil {
		t.Fatalf("no answer on the detached connection: %v", err)
	}
	d := jute.NewDecoder(frame)
	var h jute.ReplyHeader
	if err := h.Decode(d); err != nil {
		t.Fatal(err)
	}
	if h.Xid != 7 || h.Err != 0 {
		t.Fatalf("reply on the detached connection: xid %d err %d, want 7 and OK", h.Xid, h.Err)
	}
	var r jute.ExistsResponse
	if err := r.Decode(d); err != nil {
		t.Fatal(err)
	}
	if r.Stat.EphemeralOwner != c.SessionID() {
		t.Fatalf("the ephemeral's owner 0x%x, want the session 0x%x still open", r.Stat.EphemeralOwner, c.SessionID())
	}
}
