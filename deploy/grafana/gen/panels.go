package main

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Every panel reads the Prometheus data source the operator picks when
// importing (the ${datasource} variable).
const dsVar = "datasource"

func ds() common.DataSourceRef {
	typ, uid := "prometheus", "${"+dsVar+"}"
	return common.DataSourceRef{Type: &typ, Uid: &uid}
}

// newDashboard is a dashboard with the data source variable every panel
// uses, refreshed every 30 s over the last hour.
func newDashboard(uid, title, description string) *dashboard.DashboardBuilder {
	return dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(description).
		Tags([]string{"zk-migrate", "zookeeper"}).
		Refresh("30s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder(dsVar).Label("Prometheus").Type("prometheus"))
}

// query is one PromQL target; legend may use {{label}}.
func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Datasource(ds())
}

// refIDs names a panel's targets A, B, C... as Grafana does.
func refIDs(targets []*prometheus.DataqueryBuilder) []cog.Builder[variants.Dataquery] {
	out := make([]cog.Builder[variants.Dataquery], len(targets))
	for i, t := range targets {
		out[i] = t.RefId(string(rune('A' + i)))
	}
	return out
}

// graph is a time series panel half the dashboard wide.
func graph(title, description, unit string, targets ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(description).Unit(unit).
		Datasource(ds()).Height(8).Span(12).Min(0)
	for _, t := range refIDs(targets) {
		p.WithTarget(t)
	}
	return p
}

// single is a stat panel showing the last value of each series.
func single(title, description, unit string, span uint32, targets ...*prometheus.DataqueryBuilder) *stat.PanelBuilder {
	p := stat.NewPanelBuilder().Title(title).Description(description).Unit(unit).
		Datasource(ds()).Height(5).Span(span).
		GraphMode(common.BigValueGraphModeNone).
		ColorMode(common.BigValueColorModeBackground).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
	for _, t := range refIDs(targets) {
		p.WithTarget(t)
	}
	return p
}

// steps are absolute thresholds: base colour, then colour from each value.
func steps(base string, from ...any) *dashboard.ThresholdsConfigBuilder {
	s := []dashboard.Threshold{{Value: nil, Color: base}}
	for i := 0; i+1 < len(from); i += 2 {
		v := from[i].(float64)
		s = append(s, dashboard.Threshold{Value: &v, Color: from[i+1].(string)})
	}
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(s)
}

// texts maps exact values to words and colours (for 0/1 gauges).
func texts(m map[string][2]string) []dashboard.ValueMapping {
	opts := map[string]dashboard.ValueMappingResult{}
	for v, tc := range m {
		text, color := tc[0], tc[1]
		opts[v] = dashboard.ValueMappingResult{Text: &text, Color: &color}
	}
	return []dashboard.ValueMapping{{ValueMap: &dashboard.ValueMap{Type: dashboard.MappingTypeValueToText, Options: opts}}}
}
