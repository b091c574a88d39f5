package replicator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/zk-migrate/zk-migrate/jute"
)

// What a digest covers: for every znode its path, data, ACL (order-free),
// whether it is ephemeral, and its children's names. Not covered, because
// two ensembles can never agree on them: zxids, times, the owning session,
// and versions (a copy starts at version 0).

// aclKey renders an ACL order-independently.
func aclKey(acl []jute.ACL) string {
	parts := make([]string, len(acl))
	for i, a := range acl {
		parts[i] = fmt.Sprintf("%d:%s:%s", a.Perms, a.ID.Scheme, a.ID.ID)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// NodeHash is the SHA-256 of what a digest covers for one node.
func NodeHash(n *Node) [32]byte {
	h := sha256.New()
	var l [4]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint32(l[:], uint32(len(b)))
		h.Write(l[:])
		h.Write(b)
	}
	field([]byte(n.Path))
	field(n.Data)
	field([]byte(aclKey(n.ACL)))
	if n.Ephemeral() {
		field([]byte{1})
	} else {
		field([]byte{0})
	}
	for _, c := range n.Children {
		field([]byte(c))
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Digest is the SHA-256 over the node hashes in path order.
func (t *Tree) Digest() string {
	h := sha256.New()
	for _, p := range t.Sorted() {
		nh := NodeHash(t.Nodes[p])
		h.Write(nh[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Difference is one path where two trees disagree.
type Difference struct {
	Path string
	What string // "missing on target", "data", "acl", ...
}

func (d Difference) String() string { return d.Path + ": " + d.What }

// Compare lists up to max paths (0: all) where target differs from source,
// in path order.
func Compare(source, target *Tree, max int) []Difference {
	var out []Difference
	add := func(p, what string) bool {
		out = append(out, Difference{p, what})
		return max > 0 && len(out) >= max
	}
	paths := map[string]struct{}{}
	for p := range source.Nodes {
		paths[p] = struct{}{}
	}
	for p := range target.Nodes {
		paths[p] = struct{}{}
	}
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	for _, p := range sorted {
		s, t := source.Nodes[p], target.Nodes[p]
		var stop bool
		switch {
		case t == nil:
			stop = add(p, "missing on target")
		case s == nil:
			stop = add(p, "only on target")
		case s.Ephemeral() != t.Ephemeral():
			stop = add(p, fmt.Sprintf("ephemeral on source=%v, on target=%v", s.Ephemeral(), t.Ephemeral()))
		case !bytes.Equal(s.Data, t.Data):
			stop = add(p, fmt.Sprintf("data differs (%d bytes on source, %d on target)", len(s.Data), len(t.Data)))
		case aclsDiffer(s.ACL, t.ACL):
			stop = add(p, fmt.Sprintf("ACL differs (source %s, target %s)", formatACL(s.ACL), formatACL(t.ACL)))
		case strings.Join(s.Children, "/") != strings.Join(t.Children, "/"):
			stop = add(p, fmt.Sprintf("children differ (%d on source, %d on target)", len(s.Children), len(t.Children)))
		}
		if stop {
			break
		}
	}
	return out
}

// aclsDiffer reports whether two ACLs as read are known to differ. Where
// ZooKeeper hid a digest hash on either side, only the visible parts can be
// compared: redacted reads that differ prove the ACLs differ, equal ones
// prove nothing (the znode is unverifiable, not equal).
func aclsDiffer(s, t []jute.ACL) bool {
	if RedactedACL(s) || RedactedACL(t) {
		return aclKey(redact(s)) != aclKey(redact(t))
	}
	return aclKey(s) != aclKey(t)
}

// redact hides digest hashes as ZooKeeper does for a reader without ADMIN.
func redact(acl []jute.ACL) []jute.ACL {
	out := make([]jute.ACL, len(acl))
	for i, a := range acl {
		if a.ID.Scheme == "digest" {
			u, _, _ := strings.Cut(a.ID.ID, ":")
			a.ID.ID = u + ":x"
		}
		out[i] = a
	}
	return out
}

// Verdict is the outcome of Validate for one subtree. Exactly one holds:
// Equal (proved by digest), Different (Differences lists where), or neither
// with Unverifiable set (no difference found, but ZooKeeper hid some digest
// ACLs, so equality is not proved).
type Verdict struct {
	Root                       string
	Equal                      bool
	SourceDigest, TargetDigest string
	SourceNodes, TargetNodes   int
	Differences                []Difference
	// Unverifiable lists every znode whose ACL ZooKeeper hid, on either
	// side: the digests cannot prove them equal.
	Unverifiable []UnreadableACL
}

// Different reports whether the subtrees are known to differ.
func (v Verdict) Different() bool { return len(v.Differences) > 0 }

// Validate reads the subtrees on both sides and compares their digests; when
// they differ it lists up to max differences. A znode whose ACL ZooKeeper
// hid on either side makes the verdict unverifiable, never equal.
func Validate(ctx context.Context, ep Endpoints, roots []string, max int) ([]Verdict, error) {
	var out []Verdict
	for _, root := range roots {
		src, err := ReadTree(ctx, ep.Source, root, ReadOptions{})
		if err != nil {
			return nil, fmt.Errorf("read source: %w", err)
		}
		dst, err := ReadTree(ctx, ep.Target, root, ReadOptions{})
		if err != nil {
			return nil, fmt.Errorf("read target: %w", err)
		}
		v := Verdict{Root: root, SourceDigest: src.Digest(), TargetDigest: dst.Digest(),
			SourceNodes: len(src.Nodes), TargetNodes: len(dst.Nodes)}
		v.Unverifiable = append(unreadableIn(src, SideA), unreadableIn(dst, SideB)...)
		v.Equal = v.SourceDigest == v.TargetDigest && len(v.Unverifiable) == 0
		if v.SourceDigest != v.TargetDigest {
			v.Differences = Compare(src, dst, max)
		}
		out = append(out, v)
	}
	return out, nil
}
