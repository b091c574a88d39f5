package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
)

// params are the validated query parameters of the read endpoints.
type params struct {
	after     int // -1 when absent
	migration string
}

// query validates r's query parameters against the allowed names: an
// unknown name or a bad value is answered 400 with a hint, and ok is false.
func query(w http.ResponseWriter, r *http.Request, allowed ...string) (params, bool) {
	p := params{after: -1}
	for name, vs := range r.URL.Query() {
		if !slices.Contains(allowed, name) {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("unknown query parameter %q", name),
				"this endpoint takes " + strings.Join(allowed, ", ")})
			return p, false
		}
		if len(vs) != 1 {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("query parameter %q given %d times", name, len(vs)), "give it once"})
			return p, false
		}
		v := vs[0]
		switch name {
		case "after":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("after=%q is not an audit seq", v),
					"after=N streams the entries with seq above N (0 for all); leave it out to follow from now"})
				return p, false
			}
			p.after = n
		case "migration":
			if v == "" {
				writeJSON(w, http.StatusBadRequest, apiError{"migration= is empty", "name a migration id (zk-migrate status lists them)"})
				return p, false
			}
			p.migration = v
		}
	}
	return p, true
}

// refusalLimiter bounds how many refused calls a second enter the audit
// trail, so a flood of bad tokens cannot grow the Raft log without bound;
// the rest are only logged.
type refusalLimiter struct {
	mu     sync.Mutex
	second time.Time
	n      int
}

const refusalsPerSecond = 10

func (l *refusalLimiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := now.Truncate(time.Second); !s.Equal(l.second) {
		l.second, l.n = s, 0
	}
	l.n++
	return l.n <= refusalsPerSecond
}

// recordRefusal writes a refused call (bad token, wrong role) to the log
// and, on the leader and within the rate limit, to the audit trail.
func (s *Server) recordRefusal(r *http.Request, by, why string) {
	s.Logger.Warn("api call refused", "by", by, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", why)
	if !s.Node.IsLeader() || !s.refusals.allow(time.Now()) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	migration := ""
	if strings.HasPrefix(r.URL.Path, "/api/v1/migrations/") {
		migration = r.PathValue("id")
	}
	_ = s.Node.Apply(ctx, control.Command{Kind: control.CmdRefused, Migration: migration, By: by,
		Time: time.Now().UTC(), Detail: r.Method + " " + r.URL.Path, Error: why})
}
