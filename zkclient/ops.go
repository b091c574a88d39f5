package zkclient

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
)

// OpenACL is world:anyone with every permission.
var OpenACL = []jute.ACL{{Perms: jute.PermAll, ID: jute.Id{Scheme: "world", ID: "anyone"}}}

// Get reads a znode's data and stat.
func (c *Conn) Get(ctx context.Context, path string) ([]byte, jute.Stat, error) {
	var r jute.GetDataResponse
	err := c.Do(ctx, jute.OpGetData, &jute.GetDataRequest{Path: path}, &r)
	if err != nil {
		return nil, jute.Stat{}, err
	}
	return r.Data, r.Stat, nil
}

// Exists reads a znode's stat; a missing node is jute.CodeNoNode.
func (c *Conn) Exists(ctx context.Context, path string) (jute.Stat, error) {
	var r jute.ExistsResponse
	err := c.Do(ctx, jute.OpExists, &jute.ExistsRequest{Path: path}, &r)
	if err != nil {
		return jute.Stat{}, err
	}
	return r.Stat, nil
}

// Children lists a znode's children with its stat.
func (c *Conn) Children(ctx context.Context, path string) ([]string, jute.Stat, error) {
	var r jute.GetChildren2Response
	err := c.Do(ctx, jute.OpGetChildren2, &jute.GetChildren2Request{Path: path}, &r)
	if err != nil {
		return nil, jute.Stat{}, err
	}
	return r.Children, r.Stat, nil
}

// GetACL reads a znode's ACL.
func (c *Conn) GetACL(ctx context.Context, path string) ([]jute.ACL, jute.Stat, error) {
	var r jute.GetACLResponse
	err := c.Do(ctx, jute.OpGetACL, &jute.GetACLRequest{Path: path}, &r)
	if err != nil {
		return nil, jute.Stat{}, err
	}
	return r.ACL, r.Stat, nil
}

// Create creates a znode and returns its path (with any sequence suffix).
func (c *Conn) Create(ctx context.Context, path string, data []byte, acl []jute.ACL, flags int32) (string, error) {
	var r jute.CreateResponse
	err := c.Do(ctx, jute.OpCreate, &jute.CreateRequest{Path: path, Data: data, ACL: acl, Flags: flags}, &r)
	if err != nil {
		return "", err
	}
	return r.Path, nil
}

// Set writes a znode's data if version matches (-1: any).
func (c *Conn) Set(ctx context.Context, path string, data []byte, version int32) (jute.Stat, error) {
	var r jute.SetDataResponse
	err := c.Do(ctx, jute.OpSetData, &jute.SetDataRequest{Path: path, Data: data, Version: version}, &r)
	if err != nil {
		return jute.Stat{}, err
	}
	return r.Stat, nil
}

// SetACL replaces a znode's ACL if its aversion matches (-1: any).
func (c *Conn) SetACL(ctx context.Context, path string, acl []jute.ACL, version int32) error {
	return c.Do(ctx, jute.OpSetACL, &jute.SetACLRequest{Path: path, ACL: acl, Version: version}, &jute.SetACLResponse{})
}

// Delete deletes a znode if version matches (-1: any).
func (c *Conn) Delete(ctx context.Context, path string, version int32) error {
	return c.Do(ctx, jute.OpDelete, &jute.DeleteRequest{Path: path, Version: version}, nil)
}

// Sync makes the connected server catch up with the leader for path.
func (c *Conn) Sync(ctx context.Context, path string) error {
	return c.Do(ctx, jute.OpSync, &jute.SyncRequest{Path: path}, &jute.SyncResponse{})
}

// AddWatch sets a persistent (recursive) watch (ZooKeeper 3.6+).
func (c *Conn) AddWatch(ctx context.Context, path string, recursive bool) error {
	mode := jute.AddWatchPersistent
	if recursive {
		mode = jute.AddWatchPersistentRecursive
	}
	return c.Do(ctx, jute.OpAddWatch, &jute.AddWatchRequest{Path: path, Mode: mode}, &jute.ErrorResponse{})
}

// MultiOp is one operation of a transaction: op is OpCreate, OpDelete,
// OpSetData or OpCheck, req the matching request record.
type MultiOp struct {
	Op  jute.Op
	Req jute.Record
}

// MultiRequest builds the request record of a transaction.
func MultiRequest(ops []MultiOp) *jute.MultiRequest {
	r := &jute.MultiRequest{Ops: make([]jute.MultiOp, len(ops))}
	for i, op := range ops {
		r.Ops[i] = jute.MultiOp{Header: jute.MultiHeader{Type: int32(op.Op), Err: -1}, Req: op.Req}
	}
	return r
}

// GoMulti sends a transaction without waiting; the result is in
// call.Resp.(*jute.MultiResponse) and MultiErr tells which op failed.
func (c *Conn) GoMulti(ops []MultiOp) *Call {
	return c.Go(jute.OpMulti, MultiRequest(ops), &jute.MultiResponse{})
}

// MultiErr returns the first failing op's index and error of a completed
// multi call, or -1 and the call's own error.
func MultiErr(call *Call) (int, error) {
	if call.Err != nil {
		return -1, call.Err
	}
	r := call.Resp.(*jute.MultiResponse)
	for i, res := range r.Results {
		if res.Header.Type == int32(jute.OpError) && res.Header.Err != 0 && jute.Code(res.Header.Err) != jute.CodeRuntimeInconsistency {
			return i, jute.Code(res.Header.Err).Err()
		}
	}
	return -1, nil
}

// FourLetterWord sends a four-letter admin command (srvr, mntr, ruok...)
// to addr and returns the whole answer. A server closes the connection
// after answering; a timeout before that is an error.
func FourLetterWord(addr, word string, timeout time.Duration) (string, error) {
	return FourLetterWordTLS(addr, word, timeout, nil)
}

// FourLetterWordTLS is FourLetterWord over TLS with cfg (a server's
// secureClientPort); a nil cfg is plaintext.
func FourLetterWordTLS(addr, word string, timeout time.Duration, cfg *tls.Config) (string, error) {
	var c net.Conn
	var err error
	if cfg != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", addr, cfg)
	} else {
		c, err = net.DialTimeout("tcp", addr, timeout)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(word)); err != nil {
		return "", err
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return b.String(), err
			}
			return b.String(), nil
		}
	}
}
