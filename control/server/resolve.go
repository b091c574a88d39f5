package server

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// resolveTimeout bounds the DNS lookups of one create or start.
const resolveTimeout = 5 * time.Second

// resolveEnsembles resolves every host:port of the given ZooKeeper connect
// strings to all its addresses (ip:port), sorted and without duplicates.
// The API does this, not the Raft state machine (which must stay
// deterministic), so that one server spelled two ways ("localhost:2181",
// "127.0.0.1:2181") is recognised as one by the exclusivity rule. A host
// that does not resolve is an error naming it.
func resolveEnsembles(ctx context.Context, ensembles ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	var out []string
	for _, e := range ensembles {
		for _, a := range strings.Split(e, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			host, port, err := net.SplitHostPort(a)
			if err != nil {
				return nil, fmt.Errorf("server %q: %w", a, err)
			}
			ips, err := net.DefaultResolver.LookupHost(ctx, host)
			if err != nil || len(ips) == 0 {
				return nil, fmt.Errorf("host %q (of %s) does not resolve: %v", host, a, err)
			}
			for _, ip := range ips {
				out = append(out, net.JoinHostPort(ip, port))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
