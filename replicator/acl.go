package replicator

import (
	"fmt"
	"sort"
	"strings"

	"github.com/zk-migrate/zk-migrate/jute"
)

// ZooKeeper 3.6+ answers getACL with the hash of every digest id replaced by
// "x" ("op:x" for "op:<base64 SHA-1>") when the reader lacks ADMIN permission
// on the node (FinalRequestProcessor). The redacted value is a valid digest
// id to setACL, but no password ever hashes to "x": a copy of it locks the
// owner out for good, and comparing two redacted reads proves nothing. So
// such an ACL is never copied and never called equal.

// RedactedACL reports whether ZooKeeper hid the hash of a digest id in acl.
// A real digest id is "user:" followed by a 28-character base64 SHA-1; a
// redacted one ends in ":x". A literal "user:x" id (written by an earlier,
// corrupting copy) reads the same and is as unusable.
func RedactedACL(acl []jute.ACL) bool {
	for _, a := range acl {
		if a.ID.Scheme == "digest" && strings.HasSuffix(a.ID.ID, ":x") {
			return true
		}
	}
	return false
}

// UnreadableACL is a znode whose ACL ZooKeeper hid from the replicator, or
// (NoRead) that its credentials may not read at all.
type UnreadableACL struct {
	Side Side       `json:"side"`
	Path string     `json:"path"`
	ACL  []jute.ACL `json:"acl"` // as read, redacted; nil with NoRead
	// NoRead: the ACL grants the credentials no READ permission (ZooKeeper
	// answers NOAUTH), so neither the data nor the ACL (getACL needs READ
	// or ADMIN) can be read, nor the children listed.
	NoRead bool `json:"no_read,omitempty"`
}

func (u UnreadableACL) String() string {
	if u.NoRead {
		return fmt.Sprintf("%s %s: no READ permission (NOAUTH)", u.Side, u.Path)
	}
	return fmt.Sprintf("%s %s: %s", u.Side, u.Path, formatACL(u.ACL))
}

// MarshalText renders a side as "A" or "B".
func (s Side) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// formatACL renders an ACL as ZooKeeper's CLI does: scheme:id:perms.
func formatACL(acl []jute.ACL) string {
	parts := make([]string, len(acl))
	for i, a := range acl {
		parts[i] = a.ID.Scheme + ":" + a.ID.ID + ":" + permString(a.Perms)
	}
	return strings.Join(parts, ", ")
}

func permString(p int32) string {
	var b strings.Builder
	for _, x := range []struct {
		bit int32
		c   byte
	}{{jute.PermCreate, 'c'}, {jute.PermDelete, 'd'}, {jute.PermRead, 'r'}, {jute.PermWrite, 'w'}, {jute.PermAdmin, 'a'}} {
		if p&x.bit != 0 {
			b.WriteByte(x.c)
		}
	}
	return b.String()
}

// unreadableIn lists the nodes of t whose ACL is redacted, in path order,
// then those it could not read at all.
func unreadableIn(t *Tree, side Side) []UnreadableACL {
	var out []UnreadableACL
	for _, p := range t.Unreadable {
		out = append(out, UnreadableACL{Side: side, Path: p, ACL: t.Nodes[p].ACL})
	}
	for _, p := range t.NoRead {
		out = append(out, UnreadableACL{Side: side, Path: p, NoRead: true})
	}
	return out
}

// UnreadableACLError refuses a copy or a verification because ZooKeeper hid
// digest ACLs from the replicator, or its credentials may not read some
// znodes at all. It lists every such znode, on both sides, and says how to
// give the replicator the right to read them.
type UnreadableACLError struct {
	Nodes []UnreadableACL
}

// ACLRemedy says how to let the replicator read redacted digest ACLs.
// users are the digest identities holding ADMIN on the nodes (may be empty).
func ACLRemedy(users []string) string {
	who := "the identity that holds ADMIN on them"
	if len(users) > 0 {
		ids := make([]string, len(users))
		for i, u := range users {
			ids[i] = "digest:" + u + ":<password>"
		}
		who = strings.Join(ids, " and ")
	}
	return "fix: give the replicator credentials with READ and ADMIN permission on these znodes, on both ensembles: " +
		"--auth " + who + " (sync.auth in migration.yaml), " +
		"or the ensembles' super digest: start every server with " +
		"-Dzookeeper.DigestAuthenticationProvider.superDigest=super:<base64 SHA-1 of super:<password>> " +
		"and pass --auth digest:super:<password>"
}

// AdminUsers lists the digest users that hold ADMIN on the nodes (any of
// them can read the real ACL), sorted, without repeats.
func AdminUsers(nodes []UnreadableACL) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range nodes {
		for _, a := range n.ACL {
			if a.ID.Scheme != "digest" || a.Perms&jute.PermAdmin == 0 {
				continue
			}
			u, _, _ := strings.Cut(a.ID.ID, ":")
			if !seen[u] {
				seen[u] = true
				out = append(out, u)
			}
		}
	}
	sort.Strings(out)
	return out
}

// DescribeUnreadable explains why the nodes cannot be copied or verified,
// lists up to max of them (0: all) and gives the remedy.
func DescribeUnreadable(nodes []UnreadableACL, max int) string {
	var b strings.Builder
	var hidden, noRead []UnreadableACL
	for _, n := range nodes {
		if n.NoRead {
			noRead = append(noRead, n)
		} else {
			hidden = append(hidden, n)
		}
	}
	list := func(ns []UnreadableACL) {
		for i, n := range ns {
			if max > 0 && i == max {
				fmt.Fprintf(&b, "  ... and %d more\n", len(ns)-max)
				break
			}
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	if len(noRead) > 0 {
		fmt.Fprintf(&b, "the replicator's credentials lack READ permission on %d znode(s): ZooKeeper answers NOAUTH, so neither their data "+
			"nor their ACL can be read and they can be neither copied nor verified (running again will not help):\n", len(noRead))
		list(noRead)
	}
	if len(hidden) == 0 {
		b.WriteString(ACLRemedy(nil))
		return b.String()
	}
	fmt.Fprintf(&b, "ZooKeeper hides the digest ACL of %d znode(s) from the replicator: getACL shows user:x instead of the password hash "+
		"to a client without ADMIN permission on the node (ZooKeeper 3.6+). Copying that would lock the owner out on the other ensemble "+
		"and comparing it proves nothing, so these znodes are neither copied nor verified:\n", len(hidden))
	list(hidden)
	onB := false
	for _, n := range hidden {
		onB = onB || n.Side == SideB
	}
	if onB {
		b.WriteString("(on B a literal user:x id, written by an earlier copy, reads the same: " +
			"it can only be repaired on B by hand, as the super user)\n")
	}
	b.WriteString(ACLRemedy(AdminUsers(nodes)))
	return b.String()
}

func (e *UnreadableACLError) Error() string { return DescribeUnreadable(e.Nodes, 0) }
