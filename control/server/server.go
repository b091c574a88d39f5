// Package server is the control plane's REST API (PRD 9.2) on top of a
// raftstore node: token authentication with viewer and operator roles,
// every change attributed in the audit trail, writes forwarded from
// followers to the leader, and a server-sent-events stream of the audit.
//
// Usage:
//
//	srv := &server.Server{Node: node, Tokens: tokens}
//	http.ListenAndServe(addr, srv.Handler())
package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/raftstore"
)

// Role orders what a token may do.
type Role int

// Roles.
const (
	RoleViewer   Role = 1 // read
	RoleOperator Role = 2 // read and change
)

// Identity is who holds a token.
type Identity struct {
	Name string
	Role Role
}

// LoadTokens reads a token file: one "TOKEN ROLE NAME" per line (role
// viewer or operator), '#' comments.
func LoadTokens(path string) (map[string]Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokens: %w", err)
	}
	defer f.Close()
	out := map[string]Identity{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 3 {
			return nil, fmt.Errorf("%s:%d: want TOKEN ROLE NAME", path, n)
		}
		var r Role
		switch fs[1] {
		case "viewer":
			r = RoleViewer
		case "operator":
			r = RoleOperator
		default:
			return nil, fmt.Errorf("%s:%d: role %q: want viewer or operator", path, n, fs[1])
		}
		if len(fs[0]) < 16 {
			return nil, fmt.Errorf("%s:%d: token too short (at least 16 characters)", path, n)
		}
		out[fs[0]] = Identity{Name: fs[2], Role: r}
	}
	return out, sc.Err()
}

// Node is what the API needs of a raftstore node.
type Node interface {
	Apply(ctx context.Context, c control.Command) error
	State() *control.State
	IsLeader() bool
	Leader() (addr, id string)
	Join(id, addr string) error
	Remove(id string) error
	Servers() ([]raftstore.Server, error)
	Stats() raftstore.ServerStats
}

var _ Node = (*raftstore.Node)(nil)

// Server serves the API.
type Server struct {
	Node   Node
	Tokens map[string]Identity
	// Health adds live detail to GET .../health (sync lag, digests...).
	Health func(id string) any
	// SyncStatus answers GET /api/v1/sync/status.
	SyncStatus func() any
	// SyncProblem, if set, says why a migration's sync is not healthy
	// ("" if it is), given the leader's id; by default the replicated
	// state's verdict (control.Migration.SyncProblem).
	SyncProblem func(m *control.Migration, leader string) string
	// FlipCheck, if set, is asked before an advance to the flip is
	// accepted: an error refuses it with the reason (409).
	FlipCheck func(ctx context.Context, m *control.Migration) error
	// Transport carries requests forwarded to the leader (nil: the
	// default); with TLS between control nodes it verifies their
	// certificates (tlsconf.Files.HTTPTransport).
	Transport http.RoundTripper
	// Members, if set, lists this node's gossip pool (GET
	// /api/v1/proxies, the dashboard's proxies).
	Members func() []membership.Member
	Logger  *slog.Logger

	refusals refusalLimiter
	routes   []string
}

type apiError struct {
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Routes lists the patterns Handler registers ("METHOD /path"), for the
// API reference and its test.
func Routes() []string {
	s := &Server{}
	s.Handler()
	return append([]string(nil), s.routes...)
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	mux := http.NewServeMux()
	s.routes = nil
	handle := func(pattern string, h http.Handler) { mux.Handle(pattern, h); s.routes = append(s.routes, pattern) }
	read := func(h http.HandlerFunc) http.Handler { return s.auth(RoleViewer, false, h) }
	// A follower forwards every write, authorized or not, to the leader,
	// which checks the token and records a refusal in the audit trail.
	write := func(h http.HandlerFunc) http.Handler { return s.onLeader(s.auth(RoleOperator, true, h)) }
	// Reads of migrations and audit go to the leader, so a client reads
	// its own writes through any node (a follower may not have applied
	// them yet); with no leader reachable a node answers from its own
	// state, marked stale (header X-Zkm-Stale).
	view := func(h http.HandlerFunc) http.Handler { return s.auth(RoleViewer, false, s.leaderView(h)) }
	handle("GET /api/v1/migrations", view(s.list))
	handle("POST /api/v1/migrations", write(s.create))
	handle("GET /api/v1/migrations/{id}", view(s.get))
	handle("DELETE /api/v1/migrations/{id}", write(s.delete))
	handle("GET /api/v1/migrations/{id}/health", view(s.health))
	handle("GET /api/v1/migrations/{id}/report", view(s.report))
	for _, verb := range []string{"start", "approve", "pause", "resume", "retry", "advance", "rollback"} {
		handle("POST /api/v1/migrations/{id}/"+verb, write(s.action(verb)))
	}
	handle("GET /api/v1/sync/status", view(s.syncStatus))
	handle("GET /api/v1/audit", view(s.audit))
	handle("GET /api/v1/events", read(s.events))
	handle("POST /api/v1/cluster/join", write(s.join))
	handle("GET /api/v1/cluster/nodes", read(s.nodes))
	handle("GET /api/v1/cluster/self", read(s.self))
	handle("DELETE /api/v1/cluster/nodes/{id}", write(s.removeNode))
	handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, id := s.Node.Leader()
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "leader": id, "is_leader": s.Node.IsLeader()})
	}))
	// The dashboard: the page and its files need no token; its data
	// comes from the API with the token the user gives it.
	handle("GET /{$}", http.HandlerFunc(serveUI))
	handle("GET /ui/{file}", http.HandlerFunc(serveUI))
	handle("GET /api/v1/whoami", read(s.whoami))
	handle("GET /api/v1/proxies", read(s.proxies))
	handle("GET /api/v1/migrations/{id}/ensembles", read(s.ensembles))
	handle("GET /api/v1/migrations/{id}/tasks", read(s.tasks))
	return mux
}

type ctxKey struct{}

func identity(r *http.Request) Identity { id, _ := r.Context().Value(ctxKey{}).(Identity); return id }

// auth checks the bearer token and the role; with audit (writes, on the
// leader) a refusal is recorded in the audit trail.
func (s *Server) auth(need Role, audit bool, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		id, known := s.Tokens[tok]
		if !ok || !known {
			if audit {
				s.recordRefusal(r, "unknown-token", "missing or unknown token")
			}
			writeJSON(w, http.StatusUnauthorized, apiError{"missing or unknown token", "send Authorization: Bearer <token> (zk-migrate --token or ZKM_TOKEN)"})
			return
		}
		if id.Role < need {
			msg := fmt.Sprintf("%s is a viewer: changes need an operator token", id.Name)
			if audit {
				s.recordRefusal(r, id.Name, msg)
			}
			writeJSON(w, http.StatusForbidden, apiError{msg, "ask an operator, or use an operator token"})
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, id)))
	})
}

// onLeader forwards a write to the leader when this node is a follower.
func (s *Server) onLeader(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Node.IsLeader() {
			h.ServeHTTP(w, r)
			return
		}
		_, leader := s.Node.Leader()
		api := s.Node.State().Nodes[leader]
		if leader == "" || api == "" {
			writeJSON(w, http.StatusServiceUnavailable, apiError{"no leader known yet", "retry in a few seconds; check that a quorum of control nodes runs"})
			return
		}
		u, err := url.Parse(api)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, apiError{"bad leader address " + api, ""})
			return
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = s.Transport
		rp.ServeHTTP(w, r)
	})
}

// leaderView forwards a read to the leader, which has applied every write
// it acknowledged and knows the live detail (the sync runs there). With
// no leader known, or the leader not answering, it answers here from the
// replicated state, marked stale (header X-Zkm-Stale, with the reason).
func (s *Server) leaderView(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.Node.IsLeader() {
			h(w, r)
			return
		}
		_, leader := s.Node.Leader()
		api := s.Node.State().Nodes[leader]
		local := func(w http.ResponseWriter, r *http.Request, why string) {
			w.Header().Set(StaleHeader, fmt.Sprintf("answered by %s from its own state, which may lag: %s", s.Node.Stats().ID, why))
			h(w, r)
		}
		switch {
		case r.Header.Get(forwardedHeader) != "":
			local(w, r, "leadership moved while the request was forwarded")
			return
		case leader == "" || api == "":
			local(w, r, "no control-plane leader known")
			return
		}
		u, err := url.Parse(api)
		if err != nil {
			local(w, r, "bad leader address "+api)
			return
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		rp.Transport = s.Transport
		rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) { // leader unreachable: answer here
			local(w, r.WithContext(context.WithValue(r.Context(), leaderUnreachableKey{}, leader)),
				fmt.Sprintf("the leader %s does not answer (%v)", leader, err))
		}
		r.Header.Set(forwardedHeader, "1")
		rp.ServeHTTP(w, r)
	})
}

// StaleHeader marks a read answered by a follower from its own state
// because no leader could be asked: it may miss the latest writes.
const StaleHeader = "X-Zkm-Stale"

// leaderUnreachableKey marks (in a request's context) a leader view
// answered locally because the leader known here did not answer: its
// value is that leader's id.
type leaderUnreachableKey struct{}

// localProblem says why a leader view answered on this node cannot vouch
// for the sync, or "": only the leader knows whether the replicator runs
// and has compared digests, so a node that does not lead (the leader it
// knows is unreachable, none is known, or leadership just moved) reports
// the sync state as unknown rather than trusting a replicated record that
// may describe a dead leader.
func (s *Server) localProblem(r *http.Request) string {
	if old, ok := r.Context().Value(leaderUnreachableKey{}).(string); ok {
		return fmt.Sprintf("no control-plane leader reachable: sync state unknown (%s, the last leader known to %s, does not answer)", old, s.Node.Stats().ID)
	}
	if s.Node.IsLeader() {
		return ""
	}
	return fmt.Sprintf("no control-plane leader reachable: sync state unknown (%s does not lead and cannot reach the leader)", s.Node.Stats().ID)
}

// forwardedHeader marks a request one node forwarded to another, so it is
// forwarded once at most.
const forwardedHeader = "X-Zkm-Forwarded"

func (s *Server) apply(w http.ResponseWriter, r *http.Request, c control.Command) bool {
	c.By = identity(r).Name
	c.Time = time.Now().UTC()
	err := s.Node.Apply(r.Context(), c)
	switch {
	case err == nil:
		return true
	case errors.Is(err, control.ErrNotFound):
		writeJSON(w, http.StatusNotFound, apiError{err.Error(), "zk-migrate status lists the migrations"})
	case errors.Is(err, control.ErrOverlap):
		writeJSON(w, http.StatusConflict, apiError{err.Error(), "zk-migrate status lists the active migrations"})
	case errors.Is(err, control.ErrInvalid), errors.Is(err, control.ErrExists), errors.Is(err, control.ErrStaleEpoch), errors.Is(err, control.ErrUnknownProxy):
		writeJSON(w, http.StatusConflict, apiError{err.Error(), "zk-migrate status shows what the migration is waiting for"})
	case errors.Is(err, raftstore.ErrNotLeader):
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error(), "leadership moved; retry"})
	default:
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), ""})
	}
	return false
}

func (s *Server) list(w http.ResponseWriter, _ *http.Request) {
	st := s.Node.State()
	out := []*control.Migration{}
	for _, id := range st.MigrationIDs() {
		out = append(out, st.Migrations[id].Redacted())
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	m := s.Node.State().Migrations[r.PathValue("id")]
	if m == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no migration " + r.PathValue("id"), "zk-migrate status lists the migrations"})
		return
	}
	writeJSON(w, http.StatusOK, m.Redacted())
}

// create takes migration.yaml (or the same as JSON).
func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error(), ""})
		return
	}
	cfg, err := control.ParseConfig(b)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error(), "fix the fields named above in migration.yaml"})
		return
	}
	resolved, err := resolveEnsembles(r.Context(), cfg.Migration.SourceZK, cfg.Migration.TargetZK)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"migration.source_zk/target_zk: " + err.Error(),
			"fix the host name, or DNS on the control node (each migration's servers are resolved to tell whether two migrations share one)"})
		return
	}
	raw, _ := json.Marshal(cfg)
	c := control.Command{Kind: control.CmdCreate, Migration: cfg.Migration.ID, Config: &control.MigrationConfig{
		SourceZK: cfg.Migration.SourceZK, TargetZK: cfg.Migration.TargetZK, Paths: cfg.Migration.Paths,
		RequireApproval: cfg.Migration.RequireManualApproval, Raw: raw, Resolved: resolved}}
	if s.apply(w, r, c) {
		writeJSON(w, http.StatusCreated, s.Node.State().Migrations[cfg.Migration.ID].Redacted())
	}
}

// stepBody is the body of advance and rollback: a phase (1-6), "flip", or
// for rollback 0 (before phase 1).
type stepBody struct {
	Phase   string `json:"phase"`
	ToPhase string `json:"to_phase"`
	Confirm bool   `json:"confirm"`
}

// ParseStep reads a phase argument: 1-6, "flip", or 0.
func ParseStep(v string) (control.Step, error) {
	switch v {
	case "flip":
		return control.StepFlip, nil
	case "0", "none":
		return control.StepNone, nil
	}
	var n int
	if _, err := fmt.Sscanf(v, "%d", &n); err != nil || fmt.Sprint(n) != v {
		return 0, fmt.Errorf("phase %q: want 1 to 6 or flip", v)
	}
	return control.StepForPhase(n)
}

func (s *Server) action(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := control.Command{Kind: control.Kind(verb), Migration: r.PathValue("id")}
		if m := s.Node.State().Migrations[c.Migration]; verb == "start" && m != nil {
			resolved, err := resolveEnsembles(r.Context(), m.Config.SourceZK, m.Config.TargetZK)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, apiError{"start " + c.Migration + ": " + err.Error(),
					"fix DNS on the control node, or delete the migration and create it with addresses that resolve"})
				return
			}
			c.Resolved = resolved
		}
		if verb == "advance" || verb == "rollback" {
			var body stepBody
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
				writeJSON(w, http.StatusBadRequest, apiError{"body: " + err.Error(), `send {"phase": "2", "confirm": true} or {"to_phase": "1"}`})
				return
			}
			arg := body.Phase
			if verb == "rollback" {
				arg = body.ToPhase
			}
			step, err := ParseStep(arg)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, apiError{err.Error(), ""})
				return
			}
			if verb == "advance" && !body.Confirm {
				writeJSON(w, http.StatusBadRequest, apiError{"advancing a migration changes production", "repeat with --confirm"})
				return
			}
			if m := s.Node.State().Migrations[c.Migration]; verb == "rollback" && m != nil && !body.Confirm &&
				m.Step >= control.StepFlip && step < control.StepFlip {
				writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("rolling back from %s to %s crosses the flip: the primary ensemble changes", m.Step, step),
					"repeat with --confirm"})
				return
			}
			c.Step = step
			if m := s.Node.State().Migrations[c.Migration]; verb == "advance" && step == control.StepFlip && s.FlipCheck != nil &&
				m != nil && m.Step == control.StepDeployB && m.Status == control.StatusSucceeded {
				ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
				err := s.FlipCheck(ctx, m)
				cancel()
				if err != nil {
					writeJSON(w, http.StatusConflict, apiError{"flip refused: " + err.Error(),
						"zk-migrate validate --phase current shows the sync's health; fix it and advance again"})
					return
				}
			}
		}
		if s.apply(w, r, c) {
			writeJSON(w, http.StatusOK, s.Node.State().Migrations[c.Migration].Redacted())
		}
	}
}

// delete forgets a migration that is finished, never started or rolled
// back to 0; the body must confirm it ({"confirm": true}).
func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Confirm bool `json:"confirm"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, apiError{"body: " + err.Error(), `send {"confirm": true}`})
		return
	}
	if !body.Confirm {
		writeJSON(w, http.StatusBadRequest, apiError{"deleting a migration forgets its state", "repeat with --confirm"})
		return
	}
	if s.apply(w, r, control.Command{Kind: control.CmdDelete, Migration: r.PathValue("id")}) {
		writeJSON(w, http.StatusOK, map[string]string{"deleted": r.PathValue("id")})
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	m := s.Node.State().Migrations[r.PathValue("id")]
	if m == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no migration " + r.PathValue("id"), ""})
		return
	}
	_, leader := s.Node.Leader()
	problem := m.SyncProblem(leader)
	if s.SyncProblem != nil {
		problem = s.SyncProblem(m, leader)
	}
	if p := s.localProblem(r); p != "" {
		problem = p
	}
	out := map[string]any{"migration": m.Redacted(), "healthy": m.Status != control.StatusFailed && problem == ""}
	if problem != "" {
		out["sync_problem"] = problem
	}
	if s.Health != nil {
		out["detail"] = s.Health(m.ID)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	rep := control.MakeReport(s.Node.State(), r.PathValue("id"))
	if rep == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no migration " + r.PathValue("id"), ""})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) syncStatus(w http.ResponseWriter, _ *http.Request) {
	if s.SyncStatus == nil {
		writeJSON(w, http.StatusOK, map[string]any{"running": false})
		return
	}
	writeJSON(w, http.StatusOK, s.SyncStatus())
}

// audit lists the audit trail, only one migration's with ?migration=ID.
func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	q, ok := query(w, r, "migration")
	if !ok {
		return
	}
	out := []control.AuditEntry{}
	for _, e := range s.Node.State().Audit {
		if q.migration == "" || e.Migration == q.migration {
			out = append(out, e)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams audit entries as server-sent events (the event id is the
// entry's Seq), starting after ?after=N (entries with Seq above N; default:
// the current end), only one migration's with ?migration=ID, until the
// client leaves. Seq survives pruning, so a resumed stream loses nothing
// that is still retained.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q, ok := query(w, r, "after", "migration")
	if !ok {
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, apiError{"streaming unsupported", ""})
		return
	}
	var after uint64
	if a := s.Node.State().Audit; len(a) > 0 {
		after = a[len(a)-1].Seq
	}
	if q.after >= 0 {
		after = uint64(q.after)
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		for _, e := range s.Node.State().Audit {
			if e.Seq <= after {
				continue
			}
			after = e.Seq
			if q.migration != "" && e.Migration != q.migration {
				continue
			}
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "id: %d\nevent: audit\ndata: %s\n\n", e.Seq, b)
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}
