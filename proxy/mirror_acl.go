package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// A client may write an ACL that shuts itself out (alice hands a node to
// bob): the mirror then cannot read the primary back with the writer's
// credentials (NOAUTH) and cannot copy the node's state. The secondary
// must never stay more permissive than what the client asked for, so the
// mirror applies the ACL the client requested (kept beside the queued
// path) to the secondary through the shadow session, which the old, more
// open ACL there still admits (SPEC.md 4.9). The node's data is left to
// the replicator, which reads with its own credentials.

var (
	// errACLApplied: the primary was unreadable and the requested ACL was
	// applied to the secondary (or was there already).
	errACLApplied = errors.New("proxy: mirror: the primary is unreadable with the writer's credentials; the requested ACL was applied to the secondary, its data is left to the replicator")
	// errACLOpen: the requested ACL could not be applied: the secondary
	// may be more permissive than the primary.
	errACLOpen = errors.New("proxy: mirror: the requested ACL could not be applied to the secondary")
)

// requestedACL is the ACL a setACL or create request asks for (nil for
// any other request).
func requestedACL(body jute.Record) []jute.ACL {
	switch b := body.(type) {
	case *jute.SetACLRequest:
		return b.ACL
	case *jute.CreateRequest:
		return b.ACL
	case *jute.CreateTTLRequest:
		return b.ACL
	}
	return nil
}

// queuedACL is the ACL the latest write of the queued p requested.
func (sh *shadow) queuedACL(p string) []jute.ACL {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.queue.acl[p]
}

// tightenACL handles a primary that refused the writer's read of p
// (readErr, NOAUTH): b is p on the secondary. When the latest write of p
// requested an ACL, that ACL is applied to the secondary; otherwise the
// refusal is returned (counted as noauth).
func (sh *shadow) tightenACL(ctx context.Context, c *zkclient.Conn, p string, b node, readErr error) error {
	acl := sh.queuedACL(p)
	if acl == nil {
		return readErr
	}
	if !b.exists || aclEqual(b.acl, acl) {
		return errACLApplied // nothing on the secondary is more open than asked
	}
	err := sh.fencedSetACL(ctx, c, p, acl, -1)
	switch {
	case err == nil, jute.CodeOf(err) == jute.CodeNoNode:
		return errACLApplied
	case !isZKCode(err):
		return err // a lost connection: the path stays queued and is retried
	}
	return fmt.Errorf("%w: %s: %w", errACLOpen, p, err)
}
