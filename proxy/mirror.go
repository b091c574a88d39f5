package proxy

import (
	"bytes"
	"context"
	"errors"
	"math"
	"path"
	"time"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/replicator"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// The mirror (SPEC.md 4.9): after the primary acknowledges a client's
// write, the proxy queues the paths it touched on the session's shadow,
// never the operation. The shadow's goroutine makes each path's state on
// the secondary equal to the primary's: it reads the path on the secondary
// (through the shadow session), then on the primary (after a sync), writes
// the primary's state to the secondary conditioned on the version it just
// read there, and repeats until a read of the secondary followed by a read
// of the primary shows them equal. Every writer verifying that way is what
// makes concurrent proxies converge on the primary's final state.

var (
	errMirrorGaveUp = errors.New("proxy: mirror: the path did not converge (it changes faster than it can be copied)")
	errACLHidden    = jute.Error{Code: jute.CodeNoAuth}
)

// maxPathFailures bounds the attempts at one path that end in a lost
// connection or a timeout before it is handed to the replicator.
const maxPathFailures = 20

// maxMirrorRounds bounds the read-compare-write rounds for one path before
// it is handed to the replicator.
const maxMirrorRounds = 50

// node is one znode's state as read on one ensemble.
type node struct {
	exists bool
	data   []byte
	acl    []jute.ACL
	stat   jute.Stat
}

// readNode reads p's data and ACL on c (after a sync when sync is set),
// retrying until both reads show the same version of the node.
func readNode(ctx context.Context, c *zkclient.Conn, p string, sync bool) (node, error) {
	for {
		var sc *zkclient.Call
		if sync {
			sc = c.Go(jute.OpSync, &jute.SyncRequest{Path: p}, &jute.SyncResponse{})
		}
		gd := c.Go(jute.OpGetData, &jute.GetDataRequest{Path: p}, &jute.GetDataResponse{})
		ga := c.Go(jute.OpGetACL, &jute.GetACLRequest{Path: p}, &jute.GetACLResponse{})
		for _, call := range []*zkclient.Call{sc, gd, ga} {
			if call == nil {
				continue
			}
			select {
			case <-call.Done:
			case <-ctx.Done():
				return node{}, ctx.Err()
			}
		}
		if sc != nil && sc.Err != nil && !isZKCode(sc.Err) {
			return node{}, sc.Err
		}
		dn, an := jute.CodeOf(gd.Err) == jute.CodeNoNode, jute.CodeOf(ga.Err) == jute.CodeNoNode
		switch {
		case dn && an:
			return node{}, nil
		case gd.Err != nil && !dn:
			return node{}, gd.Err
		case ga.Err != nil && !an:
			return node{}, ga.Err
		case dn != an:
			continue // created or deleted between the two reads
		}
		d, a := gd.Resp.(*jute.GetDataResponse), ga.Resp.(*jute.GetACLResponse)
		if d.Stat.Czxid != a.Stat.Czxid || d.Stat.Mzxid != a.Stat.Mzxid || d.Stat.Aversion != a.Stat.Aversion {
			continue // changed between the two reads
		}
		return node{exists: true, data: d.Data, acl: a.ACL, stat: d.Stat}, nil
	}
}

// nodeKind classifies a znode by its ephemeralOwner, as ZooKeeper's
// EphemeralType does.
type nodeKind uint8

const (
	kindPersistent nodeKind = iota
	kindEphemeral
	kindContainer
	kindTTL
)

func kindOf(owner int64) nodeKind {
	switch {
	case owner == 0:
		return kindPersistent
	case owner == math.MinInt64:
		return kindContainer
	case uint64(owner)>>56 == 0xff:
		return kindTTL
	}
	return kindEphemeral
}

// ttlOf is a TTL node's time to live in ms.
func ttlOf(owner int64) int64 { return owner & 0x000000ffffffffff }

// same reports whether the secondary's b is the primary's a, as far as the
// mirror copies: existence, data, ACL, kind, and for the client's own
// ephemerals, ownership by this shadow session.
func (sh *shadow) same(a, b node, shadowID int64) bool {
	if a.exists != b.exists {
		return false
	}
	if !a.exists {
		return true
	}
	ka := kindOf(a.stat.EphemeralOwner)
	if ka != kindOf(b.stat.EphemeralOwner) || !bytes.Equal(a.data, b.data) || !aclEqual(a.acl, b.acl) {
		return false
	}
	return ka != kindEphemeral || a.stat.EphemeralOwner != sh.ownerID() || b.stat.EphemeralOwner == shadowID
}

func aclEqual(a, b []jute.ACL) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// mirror makes p's state on the secondary (through c, the shadow session)
// equal to the primary's. It returns nil once a read of the secondary
// followed by a read of the primary shows them equal (or the node is
// another session's ephemeral, which its owner's proxy mirrors).
func (sh *shadow) mirror(ctx context.Context, c *zkclient.Conn, p string) error {
	ctx, cancel := context.WithTimeout(ctx, sh.timeout)
	defer cancel()
	a, err := sh.srv.primaryReader(ctx, sh.authsCopy())
	if err != nil {
		return err
	}
	foreignWaits := 0
	for round := 0; round < maxMirrorRounds; round++ {
		b, err := readNode(ctx, c, p, false)
		if err != nil {
			return err
		}
		pa, err := readNode(ctx, a, p, true)
		if err != nil {
			if !isZKCode(err) {
				sh.srv.dropPrimaryReader(a)
			}
			if jute.CodeOf(err) == jute.CodeNoAuth {
				return sh.tightenACL(ctx, c, p, b, err)
			}
			return err
		}
		sh.noteEphemeral(p, pa)
		if sh.same(pa, b, c.SessionID()) {
			return nil
		}
		if pa.exists && replicator.RedactedACL(pa.acl) {
			return errACLHidden
		}
		switch {
		case !pa.exists:
			err = sh.fencedDelete(ctx, c, p, b.stat.Version)
			if jute.CodeOf(err) == jute.CodeNotEmpty {
				// Its children on the secondary go first (each is mirrored:
				// gone on the primary, it is deleted).
				kids, _, kerr := c.Children(ctx, p)
				if kerr != nil {
					return kerr
				}
				for _, k := range kids {
					if err := sh.mirror(ctx, c, path.Join(p, k)); err != nil {
						return err
					}
				}
				err = nil
			}
		case b.exists && kindOf(b.stat.EphemeralOwner) != kindOf(pa.stat.EphemeralOwner),
			b.exists && kindOf(pa.stat.EphemeralOwner) == kindEphemeral && pa.stat.EphemeralOwner == sh.ownerID() && b.stat.EphemeralOwner != c.SessionID():
			// Deleted and re-created as another kind (or by a lost shadow
			// session): delete it here, then create it as it is there.
			err = sh.fencedDelete(ctx, c, p, b.stat.Version)
		case !b.exists:
			if kindOf(pa.stat.EphemeralOwner) == kindEphemeral && pa.stat.EphemeralOwner != sh.ownerID() {
				// Another session's ephemeral: only its own shadow session
				// may create it. Its proxy mirrors it after creating it on
				// the primary; wait a little for that (this proxy may have
				// changed its data meanwhile), then leave it.
				if foreignWaits++; foreignWaits > 20 {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(25 * time.Millisecond):
				}
				continue
			}
			err = sh.create(ctx, c, p, pa)
			if jute.CodeOf(err) == jute.CodeNoNode && p != "/" {
				// The parent is missing on the secondary: mirror it first.
				err = sh.mirror(ctx, c, path.Dir(p))
			}
		default:
			if !bytes.Equal(pa.data, b.data) {
				_, err = sh.fencedMulti(ctx, c, zkclient.MultiOp{Op: jute.OpSetData, Req: &jute.SetDataRequest{Path: p, Data: pa.data, Version: b.stat.Version}})
			}
			if err == nil && !aclEqual(pa.acl, b.acl) {
				err = sh.fencedSetACL(ctx, c, p, pa.acl, b.stat.Aversion)
			}
		}
		switch jute.CodeOf(err) {
		case jute.CodeOK, jute.CodeNoNode, jute.CodeNodeExists, jute.CodeBadVersion, jute.CodeNotEmpty:
			// Raced with another writer of the secondary: read again.
		default:
			return err
		}
	}
	return errMirrorGaveUp
}

// create creates p on the secondary as the primary's pa: same data, ACL
// and kind; an ephemeral is owned by the shadow session.
func (sh *shadow) create(ctx context.Context, c *zkclient.Conn, p string, pa node) error {
	owner := pa.stat.EphemeralOwner
	op, req := jute.OpCreate, jute.Record(&jute.CreateRequest{Path: p, Data: pa.data, ACL: pa.acl})
	switch kindOf(owner) {
	case kindEphemeral:
		req.(*jute.CreateRequest).Flags = jute.FlagEphemeral
	case kindContainer:
		op = jute.OpCreateContainer
		req.(*jute.CreateRequest).Flags = jute.FlagContainer
	case kindTTL:
		op, req = jute.OpCreateTTL, &jute.CreateTTLRequest{Path: p, Data: pa.data, ACL: pa.acl, Flags: jute.FlagPersistentWithTTL, TTL: ttlOf(owner)}
	}
	_, err := sh.fencedMulti(ctx, c, zkclient.MultiOp{Op: op, Req: req})
	return err
}

// fencedDelete deletes p on the secondary at version v, after the fence
// check.
func (sh *shadow) fencedDelete(ctx context.Context, c *zkclient.Conn, p string, v int32) error {
	_, err := sh.fencedMulti(ctx, c, zkclient.MultiOp{Op: jute.OpDelete, Req: &jute.DeleteRequest{Path: p, Version: v}})
	return err
}

// fencedSetACL sets p's ACL on the secondary after a fence check sent just
// before it on the same session: setACL cannot go inside a multi, so this
// one is not atomic with the check (SPEC.md 4.10, "setACL").
func (sh *shadow) fencedSetACL(ctx context.Context, c *zkclient.Conn, p string, acl []jute.ACL, v int32) error {
	if _, err := sh.fencedMulti(ctx, c); err != nil {
		return err
	}
	return c.SetACL(ctx, p, acl, v)
}

// noteEphemeral keeps the set of the client's ephemerals current, to
// create them again if the shadow session is ever lost.
func (sh *shadow) noteEphemeral(p string, pa node) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.repair {
		return // the ended session's ephemerals ended with it
	}
	if pa.exists && pa.stat.EphemeralOwner == sh.owner {
		sh.ephemerals[p] = struct{}{}
	} else {
		delete(sh.ephemerals, p)
	}
}

func (sh *shadow) authsCopy() []zkclient.Auth {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return append([]zkclient.Auth(nil), sh.auths...)
}

func (sh *shadow) backlog() int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.queue.len()
}
