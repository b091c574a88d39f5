package control

import (
	"strings"
	"testing"
)

const goodConfig = `
migration:
  id: prod-2026
  source_zk: zka1:2181,zka2:2181
  target_zk: zkb1:2181
  paths: [/mesos, /marathon]
  require_manual_approval: true
sync:
  auth: [digest:mesos:secret]
actions:
  masters_on_b: {run: "true", verify: "true"}
`

func TestParseConfigDefaultsAndValues(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Migration.ID != "prod-2026" || !c.Migration.RequireManualApproval || len(c.Migration.Paths) != 2 ||
		c.Sync.ConflictStrategy != "last-write-wins" || c.Sync.LagThresholdMS != 50 || c.Migration.HealthCheckIntervalSec != 10 ||
		c.Actions["masters_on_b"].Run != "true" {
		t.Fatalf("%+v", c)
	}
}

// TestConfigErrorsNameTheField: every mistake is reported, with the field,
// the bad value and what would be valid.
func TestConfigErrorsNameTheField(t *testing.T) {
	bad := `
migration:
  id: Prod!
  source_zk: zka1
  target_zk: zkb1:2181
  paths: [mesos]
  health_check_interval_sec: -5
sync:
  conflict_strategy: newest
  auth: [digest]
  tls: {cert: /etc/repl.pem, key: /etc/repl-key.pem}
actions:
  reboot_everything: {run: "true"}
`
	_, err := ParseConfig([]byte(bad))
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{
		`migration.id: "Prod!" is not valid`,
		`migration.source_zk: "zka1" is not valid: host:port`,
		`migration.paths[0]: "mesos" is not valid: an absolute znode path`,
		`migration.health_check_interval_sec: "-5" is not valid: 1 to 3600`,
		`sync.conflict_strategy: "newest" is not valid: last-write-wins or manual`,
		`sync.auth[0]: "(set, redacted)" is not valid: scheme:secret`,
		`sync.tls.ca: "" is not valid: the CA of the ensembles' certificates`,
		`actions.reboot_everything: "reboot_everything" is not valid: one of agents_on_b, drain_agents_a, masters_off_a, masters_on_b, remove_a`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := ParseConfig([]byte("migration:\n  idd: x\n")); err == nil || !strings.Contains(err.Error(), "migration.idd: unknown field (did you mean id?)") {
		t.Fatalf("unknown field: %v", err)
	}
}

// TestUnknownFieldNamesThePathAndTheFix: a typo is reported with its path
// and the field meant, not as a dump of a Go struct.
func TestUnknownFieldNamesThePathAndTheFix(t *testing.T) {
	_, err := ParseConfig([]byte(`
migration:
  id: m1
  source_zk: a:2181
  target_zk: b:2181
  require_manual_aproval: true
sync: {lag_treshold_ms: 10}
alerts: {smtp: {adr: "x:25"}}
actions:
  masters_on_b: {rn: "true"}
colour: blue
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"migration.require_manual_aproval: unknown field (did you mean require_manual_approval?)",
		"sync.lag_treshold_ms: unknown field (did you mean lag_threshold_ms?)",
		"alerts.smtp.adr: unknown field (did you mean addr?)",
		"actions.masters_on_b.rn: unknown field (did you mean run?)",
		"colour: unknown field (known: actions, alerts, flip, mesos, migration, sync)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "struct {") {
		t.Errorf("error dumps a Go type:\n%v", err)
	}
}

// TestConfigErrorsNeverShowSecrets: an invalid Slack webhook, an invalid
// sync.auth entry and a sync.auth that does not decode are reported by
// field, without the secret's value (the webhook's scheme, which is what
// is wrong, stays).
func TestConfigErrorsNeverShowSecrets(t *testing.T) {
	for _, c := range []struct{ yaml, field string }{
		{"migration: {id: m1, source_zk: \"a:1\", target_zk: \"b:1\"}\nalerts: {slack_webhook: \"ftp://hooks/SLACKSECRET999\"}\n", `alerts.slack_webhook: "ftp://(set, redacted)"`},
		{"migration: {id: m1, source_zk: \"a:1\", target_zk: \"b:1\"}\nsync: {auth: [\"digest:mesos:ok\", \"SECRETNOCOLON\"]}\n", `sync.auth[1]: "(set, redacted)"`},
		{"migration: {id: m1, source_zk: \"a:1\", target_zk: \"b:1\"}\nsync: {auth: \"digest:mesos:PASSWORDSECRET\"}\n", "cannot unmarshal"},
		{"migration: {id: m1, source_zk: \"a:1\", target_zk: \"b:1\"}\nsync: {auth: \"SHORTSEC\"}\n", "cannot unmarshal"},
	} {
		_, err := ParseConfig([]byte(c.yaml))
		if err == nil {
			t.Fatalf("accepted:\n%s", c.yaml)
		}
		msg := err.Error()
		for _, secret := range []string{"SLACKSECRET", "SECRETNOCOLON", "PASSWORDSECRET", "SHORTSEC", "hooks/", "mesos:PA"} {
			if strings.Contains(msg, secret) {
				t.Errorf("error shows %q: %s", secret, msg)
			}
		}
		if !strings.Contains(msg, c.field) {
			t.Errorf("error does not name %q: %s", c.field, msg)
		}
	}
}
