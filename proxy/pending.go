package proxy

import (
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
)

// pendingKind says what happens to the reply of a queued request.
type pendingKind uint8

const (
	// pendingClient: the client sent it; relay the server's reply.
	pendingClient pendingKind = iota
	// pendingInternal: the proxy sent it (ping, replayed auth or watches);
	// consume the reply.
	pendingInternal
	// pendingLocal: answered by the proxy itself (a client ping, an unknown
	// opcode); the prepared reply goes out when every earlier reply has.
	pendingLocal
)

// pending is one request awaiting its reply, in the order it was sent.
type pending struct {
	xid   int32
	op    jute.Op
	kind  pendingKind
	start time.Time
	// track says how the reply updates the session's watch or auth state;
	// arg carries what it needs (a path, a watch list, an auth packet).
	track trackKind
	path  string
	arg   any
	// local is the complete reply frame (with length) of a pendingLocal.
	local []byte
	// mirror lists the paths a write touches (two-ensemble mode), queued
	// for the secondary once the primary acknowledges it; a create's path
	// is taken from the reply (a sequential create's name).
	mirror []string
	// macl is the ACL a setACL or create requests (two-ensemble mode):
	// applied to the secondary when the writer cannot read the primary back
	// (mirror_acl.go).
	macl []jute.ACL
	// spath is the path whose Stat the reply carries; mpaths the path of
	// each op of a multi (view.go translates them).
	spath  string
	mpaths []string
	// body is a client request's decoded body, kept to re-send it when the
	// session moves to another server while it is in flight.
	body jute.Record
	// wrapped: the write went to the primary inside a multi after the
	// fence check (fence.go); its reply is unwrapped before the client
	// sees it.
	wrapped bool
}

// resendable reports whether a request can be sent again to another server
// without changing its meaning: reads, and idempotent watch registrations.
// A write whose reply was lost has an unknown outcome and is never re-sent.
func resendable(op jute.Op) bool {
	switch op {
	case jute.OpExists, jute.OpGetData, jute.OpGetACL, jute.OpGetChildren, jute.OpGetChildren2,
		jute.OpSync, jute.OpGetAllChildrenNumber, jute.OpGetEphemerals, jute.OpMultiRead,
		jute.OpWhoAmI, jute.OpCheckWatches, jute.OpAddWatch, jute.OpSetWatches, jute.OpSetWatches2,
		jute.OpPing:
		return true
	}
	return false
}

// unsafeInFlight reports whether a client request in the queue cannot be
// re-sent (see resendable).
func (q *pendingQueue) unsafeInFlight() bool {
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].kind == pendingClient && !resendable(q.items[i].op) {
			return true
		}
	}
	return false
}

// pendingQueue is a FIFO of requests in flight on one session. ZooKeeper
// answers a session's requests in order, except auth (answered on receipt)
// and the special xids, so the reply almost always matches the head.
type pendingQueue struct {
	items []pending
	head  int
}

// hasClient reports whether a client request awaits its reply.
func (q *pendingQueue) hasClient() bool {
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].kind != pendingInternal {
			return true
		}
	}
	return false
}

func (q *pendingQueue) len() int { return len(q.items) - q.head }

func (q *pendingQueue) push(p pending) { q.items = append(q.items, p) }

// peek returns the head, or nil.
func (q *pendingQueue) peek() *pending {
	if q.head == len(q.items) {
		return nil
	}
	return &q.items[q.head]
}

// pop removes the head.
func (q *pendingQueue) pop() pending {
	p := q.items[q.head]
	q.items[q.head] = pending{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 64 && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return p
}

// take removes and returns the first entry, not answered locally, with the
// given xid. It handles replies that overtake earlier requests (auth).
func (q *pendingQueue) take(xid int32) (pending, bool) {
	if h := q.peek(); h != nil && h.xid == xid && h.kind != pendingLocal {
		return q.pop(), true
	}
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].xid == xid && q.items[i].kind != pendingLocal {
			p := q.items[i]
			copy(q.items[i:], q.items[i+1:])
			q.items[len(q.items)-1] = pending{}
			q.items = q.items[:len(q.items)-1]
			return p, true
		}
	}
	return pending{}, false
}

// bufSize is the size of each of a session's four socket buffers (client
// and upstream, read and write). It holds a burst of pipelined frames; a
// larger frame bypasses it. 16 KiB keeps 1,000 busy sessions under 100 MB.
const bufSize = 16 << 10

// dropInternal removes the proxy's own requests: after their connection is
// lost no reply will ever come for them.
func (q *pendingQueue) dropInternal() { q.drop(pendingInternal) }

// dropClient removes the client's requests, once its connection has ended.
func (q *pendingQueue) dropClient() { q.drop(pendingClient) }

func (q *pendingQueue) drop(kind pendingKind) {
	kept := q.items[:q.head]
	for i := q.head; i < len(q.items); i++ {
		if q.items[i].kind != kind {
			kept = append(kept, q.items[i])
		}
	}
	clear(q.items[len(kept):])
	q.items = kept
}
