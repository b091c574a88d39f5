package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/zk-migrate/zk-migrate/ensemble"
	"github.com/zk-migrate/zk-migrate/membership"
	"github.com/zk-migrate/zk-migrate/proxy"
)

// versionsPath is a proxy's version offsets on its admin endpoint
// (proxy.Server.OffsetsHandler).
const versionsPath = "/admin/v1/versions"

// peerOffsets gives a two-ensemble proxy its peers' version offsets for a
// flip it catches up with (proxy.Config.PeerOffsets): the first proxy in
// the gossip pool advertising epoch and primary whose admin endpoint
// answers with the barrier's offsets (Offsets.Agreed), asked with the
// admin token the proxies share. Nil without
// gossip or a token (the proxy reads its own).
func peerOffsets(agent *membership.Agent, self, token string) func(context.Context, int64, ensemble.Name) (map[string]proxy.PathOffset, error) {
	if agent == nil || token == "" {
		return nil
	}
	return func(ctx context.Context, epoch int64, primary ensemble.Name) (map[string]proxy.PathOffset, error) {
		var errs []error
		for _, m := range agent.Members() {
			if m.Name == self || m.Meta.Role != membership.RoleProxy || m.Meta.Epoch != epoch || m.Meta.Primary != primary || m.Meta.API == "" {
				continue
			}
			o, err := fetchOffsets(ctx, m.Meta.API, token)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			case o.Epoch == epoch && o.Primary == primary && o.Agreed:
				return o.Paths, nil
			case o.Epoch == epoch && o.Primary == primary:
				// Its own reading outside the barrier (it restarted or
				// missed it): not the numbering to take.
				errs = append(errs, fmt.Errorf("%s: its offsets for epoch %d are its own reading, not the barrier's", m.Name, epoch))
			}
		}
		if len(errs) == 0 {
			return nil, fmt.Errorf("no peer proxy in the gossip pool advertises epoch %d with primary %s", epoch, primary.Flag())
		}
		return nil, errors.Join(errs...)
	}
}

// fetchOffsets reads GET /admin/v1/versions of the proxy at api (plain
// HTTP: an HTTPS admin endpoint is verified with the system's roots).
func fetchOffsets(ctx context.Context, api, token string) (proxy.Offsets, error) {
	var o proxy.Offsets
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(api, "/")+versionsPath, nil)
	if err != nil {
		return o, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return o, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return o, fmt.Errorf("GET %s: %s", versionsPath, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		return o, fmt.Errorf("GET %s: %w", versionsPath, err)
	}
	return o, nil
}
