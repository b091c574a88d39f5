package replicator

import (
	"encoding/json"
	"time"
)

// Event is what the replicator tells its audit trail: a conflict, a
// conflict resolved by an operator, or an alert. ContinuousConfig.OnEvent
// receives it typed; ContinuousConfig.Audit receives its JSON line.
type Event struct {
	Time time.Time
	// Kind is "conflict", "conflict_resolved" or "alert".
	Kind     string
	Conflict *Conflict // Kind "conflict"
	Alert    *Alert    // Kind "alert"
	// Path and Kept are a resolved conflict's znode and the side kept.
	Path, Kept string
}

// MarshalJSON is the audit line: {"time", "kind"} and "conflict", "alert"
// or "path" and "kept".
func (e Event) MarshalJSON() ([]byte, error) {
	v := map[string]any{"time": e.Time, "kind": e.Kind}
	switch {
	case e.Conflict != nil:
		v["conflict"] = e.Conflict
	case e.Alert != nil:
		v["alert"] = e.Alert
	case e.Kind == "conflict_resolved":
		v["path"], v["kept"] = e.Path, e.Kept
	}
	return json.Marshal(v)
}

// emit hands e to OnEvent and writes it to Audit.
func (c *Continuous) emit(e Event) {
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(e)
	}
	if c.cfg.Audit == nil {
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	c.auditMu.Lock()
	defer c.auditMu.Unlock()
	_, _ = c.cfg.Audit.Write(append(b, '\n'))
}
