package deploy

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zk-migrate/zk-migrate/control/server"
	"github.com/zk-migrate/zk-migrate/proxy"
	"github.com/zk-migrate/zk-migrate/replicator"
)

// capture is a prometheus.Registerer that keeps what is registered.
type capture struct{ cs []prometheus.Collector }

func (c *capture) Register(col prometheus.Collector) error   { c.cs = append(c.cs, col); return nil }
func (c *capture) MustRegister(cols ...prometheus.Collector) { c.cs = append(c.cs, cols...) }
func (c *capture) Unregister(prometheus.Collector) bool      { return false }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// declared lists the metric families the proxy's, the replicator's and the
// control node's instruments declare, including labelled ones no scrape shows until an
// event creates a series.
func declared() map[string]bool {
	var reg capture
	proxy.NewMetrics(&reg)
	replicator.NewMetrics(&reg)
	server.NewMetrics(&reg, nil, nil)
	out := map[string]bool{}
	for _, c := range reg.cs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				out[m[1]] = true
			}
		}
	}
	return out
}
