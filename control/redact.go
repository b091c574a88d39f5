package control

import (
	"encoding/json"
	"strings"
)

// Redacted replaces a secret's value wherever a migration leaves the
// control plane (API replies for every role, log lines): it says that the
// secret is set without showing it.
const Redacted = "(set, redacted)"

// Redacted returns a copy of m whose stored migration.yaml shows which
// secrets are set but not their values: sync.auth credentials (a digest's
// user name stays visible), alerts.slack_webhook and
// alerts.pagerduty_routing_key. A configuration that does not decode is
// left out rather than shown.
func (m *Migration) Redacted() *Migration {
	if m == nil {
		return nil
	}
	out := *m
	if m.Flip != nil {
		f := *m.Flip
		out.Flip = &f
	}
	out.Config.Raw = nil
	if len(m.Config.Raw) == 0 {
		return &out
	}
	var c Config
	if err := json.Unmarshal(m.Config.Raw, &c); err != nil {
		return &out
	}
	c.Redact()
	if raw, err := json.Marshal(c); err == nil {
		out.Config.Raw = raw
	}
	return &out
}

// Redact replaces the secrets of c by Redacted in place.
func (c *Config) Redact() {
	auth := make([]string, len(c.Sync.Auth))
	for i, a := range c.Sync.Auth {
		scheme, rest, _ := strings.Cut(a, ":")
		if user, _, ok := strings.Cut(rest, ":"); ok && scheme == "digest" {
			auth[i] = scheme + ":" + user + ":" + Redacted
		} else {
			auth[i] = scheme + ":" + Redacted
		}
	}
	c.Sync.Auth = auth
	if c.Alerts.SlackWebhook != "" {
		c.Alerts.SlackWebhook = Redacted
	}
	if c.Alerts.PagerDutyRoutingKey != "" {
		c.Alerts.PagerDutyRoutingKey = Redacted
	}
}
