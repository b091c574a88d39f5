package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/zkclient"
)

// ServerView is one ZooKeeper server as srvr describes it.
type ServerView struct {
	Addr    string `json:"addr"`
	Serving bool   `json:"serving"`
	Mode    string `json:"mode,omitempty"` // leader, follower, standalone, observer
	Zxid    string `json:"zxid,omitempty"` // as srvr prints it (0x...)
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// EnsembleView is one side of a migration, server by server.
type EnsembleView struct {
	Side    string       `json:"side"` // A or B
	Connect string       `json:"connect"`
	Primary bool         `json:"primary"`
	Serving int          `json:"serving"`
	Total   int          `json:"total"`
	Quorum  bool         `json:"quorum"`
	Leader  string       `json:"leader,omitempty"` // the server in mode leader or standalone
	Servers []ServerView `json:"servers"`
}

// srvr asks one server for srvr and reads its mode, zxid and version.
func srvr(addr string, cfg *tls.Config) ServerView {
	v := ServerView{Addr: addr}
	out, err := zkclient.FourLetterWordTLS(addr, "srvr", 2*time.Second, cfg)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	for _, line := range strings.Split(out, "\n") {
		k, val, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch k {
		case "Mode":
			v.Mode = val
		case "Zxid":
			v.Zxid = val
		case "Zookeeper version":
			v.Version = strings.SplitN(val, "-", 2)[0]
		}
	}
	if v.Mode == "" {
		v.Error = "not serving: " + firstLine(out)
		return v
	}
	v.Serving = true
	return v
}

// CheckEnsembleView asks every server of a connect string for srvr, all
// at once (tlsFor non-nil: over TLS).
func CheckEnsembleView(side, connect string, tlsFor func(serverName string) *tls.Config) EnsembleView {
	ev := EnsembleView{Side: side, Connect: connect}
	addrs := strings.Split(connect, ",")
	ev.Servers = make([]ServerView, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		addr = strings.TrimSpace(addr)
		var cfg *tls.Config
		if tlsFor != nil {
			host, _, _ := net.SplitHostPort(addr)
			cfg = tlsFor(host)
		}
		wg.Add(1)
		go func() { defer wg.Done(); ev.Servers[i] = srvr(addr, cfg) }()
	}
	wg.Wait()
	for _, s := range ev.Servers {
		ev.Total++
		if s.Serving {
			ev.Serving++
		}
		if s.Mode == "leader" || s.Mode == "standalone" {
			ev.Leader = s.Addr
		}
	}
	ev.Quorum = ev.Serving*2 > ev.Total
	return ev
}

// ensembles answers GET /api/v1/migrations/{id}/ensembles: both ensembles
// of a migration, each server's mode and zxid, read now by this node.
func (s *Server) ensembles(w http.ResponseWriter, r *http.Request) {
	m := s.Node.State().Migrations[r.PathValue("id")]
	if m == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no migration " + r.PathValue("id"), "zk-migrate status lists the migrations"})
		return
	}
	cfg, err := configOf(m)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), "delete the migration and create it again from migration.yaml"})
		return
	}
	tlsFor, err := zkTLS(cfg)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{"sync.tls: " + err.Error(), "fix the certificate files named in migration.yaml's sync.tls"})
		return
	}
	var out [2]EnsembleView
	var wg sync.WaitGroup
	for i, side := range []struct{ name, connect string }{{"A", m.Config.SourceZK}, {"B", m.Config.TargetZK}} {
		wg.Add(1)
		go func() { defer wg.Done(); out[i] = CheckEnsembleView(side.name, side.connect, tlsFor) }()
	}
	wg.Wait()
	out[0].Primary = m.Primary != ensemble.Target
	out[1].Primary = m.Primary == ensemble.Target
	writeJSON(w, http.StatusOK, out)
}

// ProxyRow is one proxy in this control node's gossip pool.
type ProxyRow struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Primary  string `json:"primary,omitempty"`
	Epoch    int64  `json:"epoch"`
	Sessions int    `json:"sessions"`
	LagMS    int64  `json:"lag_ms"`
	API      string `json:"api,omitempty"`
	// LastHeartbeat is when this node last heard from the proxy (a probe
	// answered, a join or a metadata update).
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// HeartbeatAgeMS is how long ago that was, by this node's clock.
	HeartbeatAgeMS int64 `json:"heartbeat_age_ms"`
}

// proxies answers GET /api/v1/proxies: every proxy this node's gossip
// pool lists (each node has its own view of the pool; gossip needs no
// leader).
func (s *Server) proxies(w http.ResponseWriter, _ *http.Request) {
	out := map[string]any{"gossip": s.Members != nil}
	list := []ProxyRow{}
	if s.Members != nil {
		now := time.Now()
		for _, m := range s.Members() {
			if m.Meta.Role != membership.RoleProxy {
				continue
			}
			list = append(list, ProxyRow{Name: m.Name, Addr: m.Addr, Primary: string(m.Meta.Primary), Epoch: m.Meta.Epoch,
				Sessions: m.Meta.Sessions, LagMS: m.Meta.LagMS, API: m.Meta.API,
				LastHeartbeat: m.Seen.UTC(), HeartbeatAgeMS: now.Sub(m.Seen).Milliseconds()})
		}
	}
	out["proxies"] = list
	writeJSON(w, http.StatusOK, out)
}

// TaskCounts are the Mesos tasks running on each side's agents.
type TaskCounts struct {
	Mesos  bool           `json:"mesos"` // migration.yaml has a mesos section
	Leader string         `json:"leader,omitempty"`
	Active map[string]int `json:"active,omitempty"` // A, B, other (an agent named on neither side)
	Agents map[string]int `json:"agents,omitempty"` // registered agents per side
}

// tasks answers GET /api/v1/migrations/{id}/tasks: active tasks per side
// from the leading Mesos master's operator API (GET_AGENTS, GET_TASKS).
func (s *Server) tasks(w http.ResponseWriter, r *http.Request) {
	m := s.Node.State().Migrations[r.PathValue("id")]
	if m == nil {
		writeJSON(w, http.StatusNotFound, apiError{"no migration " + r.PathValue("id"), "zk-migrate status lists the migrations"})
		return
	}
	cfg, err := configOf(m)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), "delete the migration and create it again from migration.yaml"})
		return
	}
	if cfg.Mesos == nil {
		writeJSON(w, http.StatusOK, TaskCounts{})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	out, err := countTasks(ctx, cfg.Mesos)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, apiError{"mesos: " + err.Error(), "check that a Mesos master named in migration.yaml's mesos.sides leads and answers"})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func countTasks(ctx context.Context, c *control.Mesos) (TaskCounts, error) {
	var urls []string
	side := map[string]string{} // hostname:port -> side
	for _, s := range []struct {
		name string
		side control.MesosSide
	}{{"A", c.Sides.A}, {"B", c.Sides.B}} {
		for _, p := range s.side.Masters {
			urls = append(urls, fmt.Sprintf("http://%s:%d", p.Host, p.Port))
		}
		for _, p := range s.side.Agents {
			h := p.Hostname
			if h == "" {
				h = p.Host
			}
			side[fmt.Sprintf("%s:%d", h, p.Port)] = s.name
		}
	}
	api := newMesosAPI(urls)
	leader, err := api.leader(ctx)
	if err != nil {
		return TaskCounts{}, err
	}
	agents, err := api.agents(ctx)
	if err != nil {
		return TaskCounts{}, fmt.Errorf("GET_AGENTS: %w", err)
	}
	active, _, err := api.tasks(ctx)
	if err != nil {
		return TaskCounts{}, fmt.Errorf("GET_TASKS: %w", err)
	}
	out := TaskCounts{Mesos: true, Leader: leader, Active: map[string]int{"A": 0, "B": 0}, Agents: map[string]int{"A": 0, "B": 0}}
	sideOf := map[string]string{} // agent id -> side
	for _, a := range agents {
		sd := side[fmt.Sprintf("%s:%d", a.AgentInfo.Hostname, a.AgentInfo.Port)]
		if sd == "" {
			sd = "other"
		}
		sideOf[a.AgentInfo.ID.Value] = sd
		out.Agents[sd]++
	}
	for _, t := range active {
		sd := sideOf[t.AgentID.Value]
		if sd == "" {
			sd = "other"
		}
		out.Active[sd]++
	}
	return out, nil
}
