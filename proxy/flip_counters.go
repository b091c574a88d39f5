package proxy

import (
	"context"
	"fmt"
	"path"
	"sort"
	"sync"

	"github.com/zk-migrate/zk-migrate/jute"
	"github.com/zk-migrate/zk-migrate/seqcounter"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// Sequential counters at a flip (hard problem 2, SPEC.md 4.10). The mirror
// converges each path to the primary's state, so a sequential child
// created and deleted before its mirror ran is never created on the
// secondary, and the secondary's creation counter of its parent falls
// behind the primary's: after a flip the next sequential create there
// would reuse a name (NODEEXISTS) or sort below a sibling. So the proxy
// remembers the parents its clients created sequential children under, and
// at the swap raises each one's counter on the new primary to the old
// primary's before it reads the versions (the control plane's guard pads
// every migration path the same way inside the hold; this covers the
// proxy's own flips: a one-shot flip, a missed flip caught up, a hold that
// ran out after the fence).

// maxSeqParents bounds the parents remembered; beyond it the guard's
// padding alone covers the others.
const maxSeqParents = 10000

// seqParents is the set of parents with sequential children created
// through this proxy.
type seqParents struct {
	mu sync.Mutex
	m  map[string]struct{}
}

// note records the parent of created if its name is sequential.
func (sp *seqParents) note(created string) {
	if !seqcounter.IsSequentialName(path.Base(created)) {
		return
	}
	parent := path.Dir(created)
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.m == nil {
		sp.m = map[string]struct{}{}
	}
	if len(sp.m) < maxSeqParents {
		sp.m[parent] = struct{}{}
	}
}

func (sp *seqParents) list() []string {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out := make([]string, 0, len(sp.m))
	for p := range sp.m {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// matchCounters raises, on the new primary nc, the creation counter of
// every remembered parent to the old primary oc's. A parent gone from
// either side is skipped (nothing to name under it).
func (s *Server) matchCounters(ctx context.Context, oc, nc *zkclient.Conn) (padded int, err error) {
	for _, p := range s.seqParents.list() {
		n, err := seqcounter.Match(ctx, oc, nc, p)
		if err != nil {
			if jute.CodeOf(err) == jute.CodeNoNode {
				continue
			}
			return padded, fmt.Errorf("sequence counter of %s: %w", p, err)
		}
		if n > 0 {
			padded++
		}
	}
	return padded, nil
}
