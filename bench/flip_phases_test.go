package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// phaseLog is a slog handler that keeps the duration attributes of the
// proxies' "flip done" lines (drain, version read, pause) and "session
// flipped" lines (each session's move, as session_*) and "holding" lines
// (a barrier's hold, as hold_*) and drops every other record: the flip benchmark reports where the pause went.
type phaseLog struct {
	mu    sync.Mutex
	order []string
	d     map[string][]time.Duration
}

func (h *phaseLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *phaseLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *phaseLog) WithGroup(string) slog.Handler            { return h }

func (h *phaseLog) Handle(_ context.Context, r slog.Record) error {
	prefix := ""
	switch r.Message {
	case "flip done":
	case "session flipped":
		prefix = "session_"
	case "flip barrier: holding client requests":
		prefix = "hold_"
	default:
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.d == nil {
		h.d = map[string][]time.Duration{}
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Value.Kind() == slog.KindDuration {
			k := prefix + a.Key
			if _, ok := h.d[k]; !ok {
				h.order = append(h.order, k)
			}
			h.d[k] = append(h.d[k], a.Value.Duration())
		}
		return true
	})
	return nil
}

// summary is "key p50/max" for each duration attribute seen.
func (h *phaseLog) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var parts []string
	for _, k := range h.order {
		ds := append([]time.Duration(nil), h.d[k]...)
		sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
		parts = append(parts, fmt.Sprintf("%s %s/%s", k, ms(ds[len(ds)/2]), ms(ds[len(ds)-1])))
	}
	return strings.Join(parts, ", ")
}
