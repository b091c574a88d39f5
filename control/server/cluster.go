package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/raftstore"
)

type joinBody struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	API      string `json:"api"`
}

// join adds a control node as a non-voter (it votes once caught up); an
// address where nothing answers is refused.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var b joinBody
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&b); err != nil || b.ID == "" || b.RaftAddr == "" || b.API == "" {
		writeJSON(w, http.StatusBadRequest, apiError{"want {id, raft_addr, api}", `send {"id": "c2", "raft_addr": "10.0.0.2:7000", "api": "http://10.0.0.2:8080"}`})
		return
	}
	if err := s.Node.Join(b.ID, b.RaftAddr); err != nil {
		switch {
		case errors.Is(err, raftstore.ErrMember):
			writeJSON(w, http.StatusConflict, apiError{err.Error(), fmt.Sprintf("the cluster is unchanged; to move a node, `zk-migrate node remove --id %s --confirm` first, then join it again", b.ID)})
		case errors.Is(err, raftstore.ErrUnreachable):
			writeJSON(w, http.StatusConflict, apiError{err.Error(), "the cluster is unchanged; start the node, then join again"})
		case errors.Is(err, raftstore.ErrNotLeader):
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error(), "leadership moved; retry"})
		default:
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), ""})
		}
		return
	}
	voter := false // a repeated join (same id and address) keeps the member's vote
	if servers, err := s.Node.Servers(); err == nil {
		for _, sv := range servers {
			if sv.ID == b.ID {
				voter = sv.Voter
			}
		}
	}
	if s.apply(w, r, control.Command{Kind: control.CmdNodeJoin, Node: b.ID, API: b.API}) {
		out := map[string]any{"joined": b.ID, "voter": voter}
		if !voter {
			out["note"] = "the node votes once it has caught up with the leader (GET /api/v1/cluster/nodes)"
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// NodeInfo is one control node as GET /api/v1/cluster/nodes shows it.
type NodeInfo struct {
	raftstore.Server
	API    string `json:"api,omitempty"`
	Leader bool   `json:"leader"`
}

func (s *Server) nodes(w http.ResponseWriter, _ *http.Request) {
	servers, err := s.Node.Servers()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), ""})
		return
	}
	_, leader := s.Node.Leader()
	apis := s.Node.State().Nodes
	out := []NodeInfo{}
	for _, sv := range servers {
		out = append(out, NodeInfo{Server: sv, API: apis[sv.ID], Leader: sv.ID == leader})
	}
	writeJSON(w, http.StatusOK, out)
}

// self reports this node's Raft progress (the leader's Autopilot reads it
// to judge whether a non-voter has caught up).
func (s *Server) self(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Node.Stats())
}

// removeNode takes a (dead) node out of the Raft configuration; the body
// must confirm it ({"confirm": true}).
func (s *Server) removeNode(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Confirm bool `json:"confirm"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, apiError{"body: " + err.Error(), `send {"confirm": true}`})
		return
	}
	if !body.Confirm {
		writeJSON(w, http.StatusBadRequest, apiError{"removing a node changes the quorum", "repeat with --confirm"})
		return
	}
	id := r.PathValue("id")
	if err := s.Node.Remove(id); err != nil {
		switch {
		case errors.Is(err, raftstore.ErrUnknownServer):
			writeJSON(w, http.StatusNotFound, apiError{err.Error(), "zk-migrate node list shows the members"})
		case errors.Is(err, raftstore.ErrLastVoter):
			writeJSON(w, http.StatusConflict, apiError{err.Error(), "a cluster needs at least one voter"})
		case errors.Is(err, raftstore.ErrNotLeader):
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error(), "leadership moved; retry"})
		default:
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), ""})
		}
		return
	}
	if s.Node.IsLeader() { // a leader that removed itself has stepped down
		if !s.apply(w, r, control.Command{Kind: control.CmdNodeRemove, Node: id}) {
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": id})
}

// StatsOverAPI returns an Autopilot Stats function that asks a node's API
// (from the replicated node list) for its Raft progress, with token, over
// rt (nil: the default transport).
func StatsOverAPI(state func() *control.State, token string, rt http.RoundTripper) func(ctx context.Context, id, addr string) (raftstore.ServerStats, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: rt}
	return func(ctx context.Context, id, _ string) (raftstore.ServerStats, error) {
		var st raftstore.ServerStats
		api := state().Nodes[id]
		if api == "" {
			return st, fmt.Errorf("node %s has not announced its API yet", id)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(api, "/")+"/api/v1/cluster/self", nil)
		if err != nil {
			return st, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return st, fmt.Errorf("node %s: %w", id, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return st, fmt.Errorf("node %s: %s", id, resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return st, fmt.Errorf("node %s: %w", id, err)
		}
		if st.ID != id {
			return st, fmt.Errorf("the API of node %s answers as %q", id, st.ID)
		}
		return st, nil
	}
}
