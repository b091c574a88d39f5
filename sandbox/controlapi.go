package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/zk-migrate/zk-migrate/control"
)

// controlAPI is the control plane's REST API as the CLI uses it: the
// demo drives the migration with the same calls `zk-migrate start`,
// `advance`, `rollback`, `status` and `report` make, trying each node in
// turn.
type controlAPI struct {
	urls  []string // http://host:port of each node
	token string   // an operator token
	hc    *http.Client
}

// apiError is an answer other than 2xx: its code and the server's JSON
// {error, hint}.
type apiError struct {
	Code  int
	Error string `json:"error"`
	Hint  string `json:"hint"`
}

func (e *apiError) String() string {
	if e.Hint != "" {
		return fmt.Sprintf("%d %s (%s)", e.Code, e.Error, e.Hint)
	}
	return fmt.Sprintf("%d %s", e.Code, e.Error)
}

// do sends one request to the first node that answers; a 503 (no leader
// yet) is retried for 15 s, as the CLI does.
func (a *controlAPI) do(ctx context.Context, method, path string, body []byte, out any) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var last error
		for _, u := range a.urls {
			req, err := http.NewRequestWithContext(ctx, method, u+path, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+a.token)
			resp, err := a.hc.Do(req)
			if err != nil {
				last = err
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				last = fmt.Errorf("%s %s: 503 %s", method, path, strings.TrimSpace(string(b)))
				continue
			}
			if stale := resp.Header.Get("X-Zkm-Stale"); stale != "" {
				// A node that knows no leader answers from its own state
				// (a restarted node may not have caught up): ask another.
				last = fmt.Errorf("%s %s: stale answer from %s: %s", method, path, u, stale)
				continue
			}
			if resp.StatusCode/100 != 2 {
				e := &apiError{Code: resp.StatusCode}
				_ = json.Unmarshal(b, e)
				if e.Error == "" {
					e.Error = strings.TrimSpace(string(b))
				}
				return fmt.Errorf("%s %s: %s", method, path, e)
			}
			if out != nil {
				if err := json.Unmarshal(b, out); err != nil {
					return fmt.Errorf("%s %s: decoding %q: %w", method, path, b, err)
				}
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("sandbox: control plane: %w", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// migration reads migration id.
func (a *controlAPI) migration(ctx context.Context, id string) (control.Migration, error) {
	var m control.Migration
	err := a.do(ctx, http.MethodGet, "/api/v1/migrations/"+id, nil, &m)
	return m, err
}

// step posts advance or rollback with a phase argument (1-6, flip, 0).
func (a *controlAPI) step(ctx context.Context, id, verb, phase string) error {
	body := map[string]any{"confirm": true}
	if verb == "rollback" {
		body["to_phase"] = phase
	} else {
		body["phase"] = phase
	}
	b, _ := json.Marshal(body)
	return a.do(ctx, http.MethodPost, "/api/v1/migrations/"+id+"/"+verb, b, nil)
}

// report reads the migration's report (phases and their timings, the
// flip).
func (a *controlAPI) report(ctx context.Context, id string) (control.Report, error) {
	var r control.Report
	err := a.do(ctx, http.MethodGet, "/api/v1/migrations/"+id+"/report", nil, &r)
	return r, err
}

// syncLag reads the running sync's lag each way (GET sync/status, from the
// leader), in milliseconds; ok is false when no sync runs.
func (a *controlAPI) syncLag(ctx context.Context, id string) (ab, ba int64, ok bool) {
	var st map[string]struct {
		Running bool  `json:"running"`
		AB      int64 `json:"lag_a_to_b_ms"`
		BA      int64 `json:"lag_b_to_a_ms"`
	}
	if err := a.do(ctx, http.MethodGet, "/api/v1/sync/status", nil, &st); err != nil {
		return 0, 0, false
	}
	s, found := st[id]
	return s.AB, s.BA, found && s.Running
}

// voters counts the nodes that vote.
func (a *controlAPI) voters(ctx context.Context) int {
	var nodes []struct {
		Voter bool `json:"voter"`
	}
	if err := a.do(ctx, http.MethodGet, "/api/v1/cluster/nodes", nil, &nodes); err != nil {
		return 0
	}
	n := 0
	for _, nd := range nodes {
		if nd.Voter {
			n++
		}
	}
	return n
}
