package control

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is migration.yaml: what an operator declares about a migration.
//
//	migration:
//	  id: prod-2026
//	  source_zk: zka1:2181,zka2:2181,zka3:2181
//	  target_zk: zkb1:2181,zkb2:2181,zkb3:2181
//	  paths: [/mesos, /marathon]
//	  require_manual_approval: true
//	  health_check_interval_sec: 10
//	sync:
//	  conflict_strategy: last-write-wins
//	  lag_threshold_ms: 50
//	  auth: [digest:mesos:secret]
//	  tls: {ca: /etc/zk-migrate/zk-ca.pem, cert: /etc/zk-migrate/repl.pem, key: /etc/zk-migrate/repl-key.pem}
//	flip:
//	  timeout_sec: 30
//	actions:            # commands run for each phase (Mesos automation)
//	  masters_on_b: {run: "...", verify: "...", undo: "..."}
type Config struct {
	Migration struct {
		ID                     string   `yaml:"id"`
		SourceZK               string   `yaml:"source_zk"`
		TargetZK               string   `yaml:"target_zk"`
		Paths                  []string `yaml:"paths"`
		RequireManualApproval  bool     `yaml:"require_manual_approval"`
		HealthCheckIntervalSec int      `yaml:"health_check_interval_sec"`
	} `yaml:"migration"`
	Sync struct {
		ConflictStrategy string   `yaml:"conflict_strategy"`
		LagThresholdMS   int      `yaml:"lag_threshold_ms"`
		Auth             []string `yaml:"auth"`
		// TLS makes the control node's replicator, health checks and flip
		// guard reach both ensembles' secureClientPort over TLS.
		TLS ZKTLS `yaml:"tls"`
	} `yaml:"sync"`
	Flip struct {
		TimeoutSec int `yaml:"timeout_sec"`
	} `yaml:"flip"`
	Actions map[string]Action `yaml:"actions"`
	Alerts  Alerts            `yaml:"alerts"`
	// Mesos, if set, has the control plane run phases 2 to 6 on the Mesos
	// cluster it describes (config_mesos.go); actions must then be empty.
	Mesos *Mesos `yaml:"mesos"`
}

// ZKTLS names PEM files on every control node: the CA of the ensembles'
// certificates and, for servers with ssl.clientAuth=need, a client
// certificate and its key.
type ZKTLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Alerts says where alerts go; every destination is optional.
type Alerts struct {
	SlackWebhook        string `yaml:"slack_webhook"`
	PagerDutyRoutingKey string `yaml:"pagerduty_routing_key"`
	PagerDutyURL        string `yaml:"pagerduty_url"` // default: the Events API v2
	SMTP                struct {
		Addr string   `yaml:"addr"`
		From string   `yaml:"from"`
		To   []string `yaml:"to"`
	} `yaml:"smtp"`
}

// Action is what a phase runs: shell commands, each optional.
type Action struct {
	Run    string `yaml:"run"`
	Verify string `yaml:"verify"`
	Undo   string `yaml:"undo"`
}

// ActionNames are the keys of Config.Actions, one per Mesos-level phase.
var ActionNames = map[string]Step{
	"masters_on_b": StepMastersOnB, "masters_off_a": StepMastersOffA,
	"agents_on_b": StepAgentsOnB, "drain_agents_a": StepDrainAgentsA, "remove_a": StepRemoveA,
}

// ConfigError is one invalid field: where, what was given, what is valid.
// Its message never shows the value of a secret field (sync.auth,
// alerts.slack_webhook, alerts.pagerduty_routing_key), only that it is set.
type ConfigError struct {
	Field, Value, Want string
}

func (e ConfigError) Error() string {
	return fmt.Sprintf("%s: %q is not valid: %s", e.Field, shownValue(e.Field, e.Value), e.Want)
}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ParseConfig reads and validates migration.yaml. Unknown fields are errors
// (a typo must not silently fall back to a default); every problem is
// reported, each naming the field.
func ParseConfig(b []byte) (*Config, error) {
	c, err := DecodeConfig(b)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// DecodeConfig reads migration.yaml and fills in defaults without
// validating, for callers that change fields first (command-line
// overrides); call Validate after.
func DecodeConfig(b []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("migration config: %w", err)
	}
	if errs := unknownFields(&doc); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("migration config: %s", redactDecodeError(err.Error(), &doc))
	}
	c.setDefaults()
	return &c, nil
}

// LoadConfig reads a file with ParseConfig.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("migration config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.Migration.HealthCheckIntervalSec == 0 {
		c.Migration.HealthCheckIntervalSec = 10
	}
	if len(c.Migration.Paths) == 0 {
		c.Migration.Paths = []string{"/mesos"}
	}
	if c.Sync.ConflictStrategy == "" {
		c.Sync.ConflictStrategy = "last-write-wins"
	}
	if c.Sync.LagThresholdMS == 0 {
		c.Sync.LagThresholdMS = 50
	}
	if c.Flip.TimeoutSec == 0 {
		c.Flip.TimeoutSec = 30
	}
	if c.Mesos != nil {
		c.Mesos.setDefaults()
	}
}

func validEnsemble(s string) bool {
	if s == "" {
		return false
	}
	for _, a := range strings.Split(s, ",") {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
			return false
		}
	}
	return true
}

// Validate checks every field and returns all problems joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, value, want string) { errs = append(errs, ConfigError{field, value, want}) }
	if !idPattern.MatchString(c.Migration.ID) {
		bad("migration.id", c.Migration.ID, "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, at most 63")
	}
	if !validEnsemble(c.Migration.SourceZK) {
		bad("migration.source_zk", c.Migration.SourceZK, "host:port[,host:port...] of ensemble A")
	}
	if !validEnsemble(c.Migration.TargetZK) {
		bad("migration.target_zk", c.Migration.TargetZK, "host:port[,host:port...] of ensemble B")
	}
	if c.Migration.SourceZK != "" && c.Migration.SourceZK == c.Migration.TargetZK {
		bad("migration.target_zk", c.Migration.TargetZK, "a different ensemble than source_zk")
	}
	for i, p := range c.Migration.Paths {
		if !strings.HasPrefix(p, "/") || p == "/" || strings.HasSuffix(p, "/") {
			bad(fmt.Sprintf("migration.paths[%d]", i), p, "an absolute znode path below the root, like /mesos")
		}
	}
	if n := c.Migration.HealthCheckIntervalSec; n < 1 || n > 3600 {
		bad("migration.health_check_interval_sec", fmt.Sprint(n), "1 to 3600")
	}
	if s := c.Sync.ConflictStrategy; s != "last-write-wins" && s != "manual" {
		bad("sync.conflict_strategy", s, "last-write-wins or manual")
	}
	if n := c.Sync.LagThresholdMS; n < 1 || n > 600000 {
		bad("sync.lag_threshold_ms", fmt.Sprint(n), "1 to 600000")
	}
	for i, a := range c.Sync.Auth {
		if scheme, secret, ok := strings.Cut(a, ":"); !ok || scheme == "" || secret == "" {
			bad(fmt.Sprintf("sync.auth[%d]", i), a, "scheme:secret, e.g. digest:mesos:password")
		}
	}
	if t := c.Sync.TLS; (t.Cert == "") != (t.Key == "") {
		bad("sync.tls.key", t.Key, "set together with sync.tls.cert (PEM files on every control node)")
	} else if t.Cert != "" && t.CA == "" {
		bad("sync.tls.ca", "", "the CA of the ensembles' certificates (PEM file on every control node)")
	}
	if n := c.Flip.TimeoutSec; n < 1 || n > 3600 {
		bad("flip.timeout_sec", fmt.Sprint(n), "1 to 3600")
	}
	for _, u := range []struct{ field, v string }{{"alerts.slack_webhook", c.Alerts.SlackWebhook}, {"alerts.pagerduty_url", c.Alerts.PagerDutyURL}} {
		if u.v != "" && !strings.HasPrefix(u.v, "https://") && !strings.HasPrefix(u.v, "http://") {
			bad(u.field, u.v, "an http(s) URL")
		}
	}
	if s := c.Alerts.SMTP; s.Addr != "" || s.From != "" || len(s.To) > 0 {
		if _, _, err := net.SplitHostPort(s.Addr); err != nil {
			bad("alerts.smtp.addr", s.Addr, "host:port of the SMTP server")
		}
		if !strings.Contains(s.From, "@") {
			bad("alerts.smtp.from", s.From, "a sender address")
		}
		if len(s.To) == 0 {
			bad("alerts.smtp.to", "", "at least one recipient")
		}
	}
	for name := range c.Actions {
		if _, ok := ActionNames[name]; !ok {
			bad("actions."+name, name, "one of "+strings.Join(slices.Sorted(maps.Keys(ActionNames)), ", "))
		}
	}
	if c.Mesos != nil {
		c.Mesos.validate(c, bad)
	}
	return errors.Join(errs...)
}
