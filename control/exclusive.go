package control

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// active reports whether m holds its ensembles and paths: it has started
// and is neither complete nor back before phase 1.
func (m *Migration) active() bool {
	if m.Status == StatusCompleted {
		return false
	}
	return m.Step != StepNone || m.Status == StatusRollingBack
}

// restartable reports whether m may be deleted or created again: it never
// started, was rolled back to 0, or completed.
func (m *Migration) restartable() bool { return !m.active() }

// paths are the synced subtrees of a configuration: Paths, else those of
// the stored migration.yaml, else the default /mesos.
func (c *MigrationConfig) paths() []string {
	if len(c.Paths) > 0 {
		return c.Paths
	}
	var full Config
	if len(c.Raw) > 0 && json.Unmarshal(c.Raw, &full) == nil && len(full.Migration.Paths) > 0 {
		return full.Migration.Paths
	}
	return []string{"/mesos"}
}

// servers are the host:port of both ensembles as written, and the ip:port
// they resolved to (Resolved): "localhost:2181" and "127.0.0.1:2181" are
// the same server.
func (c *MigrationConfig) servers() map[string]bool {
	out := map[string]bool{}
	for _, a := range c.Resolved {
		out[a] = true
	}
	for _, e := range []string{c.SourceZK, c.TargetZK} {
		for _, a := range strings.Split(e, ",") {
			if a = strings.TrimSpace(a); a != "" {
				out[a] = true
			}
		}
	}
	return out
}

// withResolved is c with the resolved servers of a start command, when it
// has them (a start made before they existed keeps the stored ones).
func (c MigrationConfig) withResolved(resolved []string) *MigrationConfig {
	if len(resolved) > 0 {
		c.Resolved = resolved
	}
	return &c
}

// overlapping reports whether one path is the other or an ancestor of it.
func overlapping(a, b string) bool {
	a, b = strings.TrimSuffix(a, "/"), strings.TrimSuffix(b, "/")
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}

// exclusive refuses a migration (id, cfg) that shares an ensemble server
// and an overlapping path with another active migration: two replicators
// and two flips over the same znodes would undo each other.
func (s *State) exclusive(id string, cfg *MigrationConfig) error {
	mine := cfg.servers()
	for _, oid := range s.MigrationIDs() {
		o := s.Migrations[oid]
		if oid == id || !o.active() {
			continue
		}
		shared := "" // the first in order: replicas must write the same error
		for _, srv := range slices.Sorted(maps.Keys(o.Config.servers())) {
			if mine[srv] {
				shared = srv
				break
			}
		}
		if shared == "" {
			continue
		}
		for _, p := range cfg.paths() {
			for _, q := range o.Config.paths() {
				if overlapping(p, q) {
					return fmt.Errorf("%w: %s (step %s, %s) also uses %s and path %s; finish it, roll it back to 0, or choose other paths",
						ErrOverlap, oid, o.Step, o.Status, shared, q)
				}
			}
		}
	}
	return nil
}

// delete forgets a migration that is not active, keeping its epoch so a
// migration created again under the same id fences above it.
func (s *State) delete(c Command) error {
	m, ok := s.Migrations[c.Migration]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, c.Migration)
	}
	if !m.restartable() {
		return invalid(m, c, "only a finished, never started or rolled-back-to-0 migration can be deleted (roll back with --to-phase 0 first)")
	}
	if s.Retired == nil {
		s.Retired = map[string]int64{}
	}
	s.Retired[m.ID] = max(s.Retired[m.ID], m.Epoch)
	delete(s.Migrations, m.ID)
	return nil
}
