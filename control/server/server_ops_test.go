package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/zk-migrate/zk-migrate/control"
)

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const secretCfg = `
migration: {id: m1, source_zk: "127.0.0.1:2181", target_zk: "127.0.0.1:2182"}
sync:
  auth: ["digest:mesos:s3cret-pass"]
alerts:
  slack_webhook: https://hooks.slack.test/services/T0/B0/xoxSECRET
  pagerduty_routing_key: R0UTINGKEY-secret
`

// TestSecretsNeverLeaveInClear: sync.auth passwords, the Slack webhook URL
// and the PagerDuty routing key appear in no API reply, for any role; the
// replies say that each is set.
func TestSecretsNeverLeaveInClear(t *testing.T) {
	base := startAPI(t)
	secrets := []string{"s3cret-pass", "xoxSECRET", "hooks.slack.test", "R0UTINGKEY"}
	check := func(what, got string) {
		t.Helper()
		for _, s := range secrets {
			if strings.Contains(got, s) {
				t.Fatalf("%s shows the secret %q:\n%s", what, s, got)
			}
		}
	}
	r := call(t, "POST", base+"/api/v1/migrations", opTok, secretCfg)
	got := body(t, r)
	if r.StatusCode != http.StatusCreated {
		t.Fatalf("create: %s %s", r.Status, got)
	}
	check("create reply", got)
	r = call(t, "POST", base+"/api/v1/migrations/m1/pause", opTok, "")
	check("pause reply", body(t, r))
	for _, tok := range []string{viewerTok, opTok} {
		for _, path := range []string{"/api/v1/migrations", "/api/v1/migrations/m1", "/api/v1/migrations/m1/health",
			"/api/v1/migrations/m1/report", "/api/v1/audit"} {
			r := call(t, "GET", base+path, tok, "")
			got := body(t, r)
			if r.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %s", path, r.Status, got)
			}
			check("GET "+path, got)
		}
	}
	// What is set is still visible.
	var m control.Migration
	if err := json.Unmarshal([]byte(body(t, call(t, "GET", base+"/api/v1/migrations/m1", viewerTok, ""))), &m); err != nil {
		t.Fatal(err)
	}
	var cfg control.Config
	if err := json.Unmarshal(m.Config.Raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Sync.Auth[0] != "digest:mesos:"+control.Redacted || cfg.Alerts.SlackWebhook != control.Redacted ||
		cfg.Alerts.PagerDutyRoutingKey != control.Redacted || cfg.Migration.SourceZK != "127.0.0.1:2181" {
		t.Fatalf("redacted config: %+v", cfg)
	}
}

// TestQueryParametersAreValidated: a negative or malformed ?after= used
// to panic the events stream; every bad or unknown parameter is a 400
// with a hint, and ?migration= filters the audit trail.
func TestQueryParametersAreValidated(t *testing.T) {
	base := startAPI(t)
	for _, q := range []string{"/api/v1/events?after=-1", "/api/v1/events?after=abc", "/api/v1/events?after=1&after=2",
		"/api/v1/events?from=3", "/api/v1/audit?migration=", "/api/v1/audit?bogus=1"} {
		r := call(t, "GET", base+q, viewerTok, "")
		got := body(t, r)
		var e apiError
		if r.StatusCode != http.StatusBadRequest || json.Unmarshal([]byte(got), &e) != nil || e.Hint == "" {
			t.Errorf("GET %s: %s %s (want 400 with a hint)", q, r.Status, got)
		}
	}
	for _, cfg := range []string{yamlCfg, strings.ReplaceAll(strings.ReplaceAll(yamlCfg, "m1", "m2"), "127.0.0.1:2181", "127.0.0.1:2183")} {
		if r := call(t, "POST", base+"/api/v1/migrations", opTok, cfg); r.StatusCode != http.StatusCreated {
			t.Fatalf("create: %s %s", r.Status, body(t, r))
		}
	}
	var entries []control.AuditEntry
	if err := json.Unmarshal([]byte(body(t, call(t, "GET", base+"/api/v1/audit?migration=m2", viewerTok, ""))), &entries); err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Migration != "m2" {
		t.Fatalf("audit of m2: %+v", entries)
	}
}

// TestRefusedCallsAreAudited: a write with an unknown token or a viewer's
// is in the audit trail with who tried what and why it was refused.
func TestRefusedCallsAreAudited(t *testing.T) {
	base := startAPI(t)
	if r := call(t, "POST", base+"/api/v1/migrations", opTok, yamlCfg); r.StatusCode != http.StatusCreated {
		t.Fatal(r.Status)
	}
	if r := call(t, "POST", base+"/api/v1/migrations/m1/start", "not-a-token-at-all-xx", ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatal(r.Status)
	}
	if r := call(t, "DELETE", base+"/api/v1/migrations/m1", viewerTok, `{"confirm":true}`); r.StatusCode != http.StatusForbidden {
		t.Fatal(r.Status)
	}
	var entries []control.AuditEntry
	if err := json.Unmarshal([]byte(body(t, call(t, "GET", base+"/api/v1/audit?migration=m1", viewerTok, ""))), &entries); err != nil {
		t.Fatal(err)
	}
	var refused []string
	for _, e := range entries {
		if e.Action == string(control.CmdRefused) {
			refused = append(refused, e.By+" "+e.Detail+" "+e.Result)
		}
	}
	if len(refused) != 2 || !strings.HasPrefix(refused[0], "unknown-token POST /api/v1/migrations/m1/start") ||
		!strings.HasPrefix(refused[1], "vic DELETE /api/v1/migrations/m1") || !strings.Contains(refused[1], "viewer") {
		t.Fatalf("refusals in the audit: %q", refused)
	}
	// Delete needs confirmation, then works on a migration never started.
	if r := call(t, "DELETE", base+"/api/v1/migrations/m1", opTok, ""); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("delete without confirm: %s", r.Status)
	}
	if r := call(t, "DELETE", base+"/api/v1/migrations/m1", opTok, `{"confirm":true}`); r.StatusCode != http.StatusOK {
		t.Fatalf("delete: %s %s", r.Status, body(t, r))
	}
	if r := call(t, "GET", base+"/api/v1/migrations/m1", opTok, ""); r.StatusCode != http.StatusNotFound {
		t.Fatalf("after delete: %s", r.Status)
	}
}

// TestJoinOfAnUnreachableNodeIsRefused: on a one-node cluster a join to
// an address where nothing listens is refused (409) and the node still
// leads and takes writes.
func TestJoinOfAnUnreachableNodeIsRefused(t *testing.T) {
	base := startAPI(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	ghost := l.Addr().String()
	l.Close()
	r := call(t, "POST", base+"/api/v1/cluster/join", opTok, `{"id":"ghost","raft_addr":"`+ghost+`","api":"http://`+ghost+`"}`)
	got := body(t, r)
	if r.StatusCode != http.StatusConflict || !strings.Contains(got, "unreachable") {
		t.Fatalf("join of a ghost: %s %s", r.Status, got)
	}
	if h := body(t, call(t, "GET", base+"/healthz", "", "")); !strings.Contains(h, `"is_leader": true`) {
		t.Fatalf("healthz after the join: %s", h)
	}
	if r := call(t, "POST", base+"/api/v1/migrations", opTok, yamlCfg); r.StatusCode != http.StatusCreated {
		t.Fatalf("write after the join: %s", r.Status)
	}
	var nodes []NodeInfo
	if err := json.Unmarshal([]byte(body(t, call(t, "GET", base+"/api/v1/cluster/nodes", viewerTok, ""))), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || !nodes[0].Voter || !nodes[0].Leader {
		t.Fatalf("nodes: %+v", nodes)
	}
}

// TestJoinWithAMembersIDOrAddressIsRefused: a join reusing a member's id
// with another (listening) address would make hashicorp/raft move that
// voter; it is refused (409, with the way to move a node) and the member
// keeps its address and vote. A member's address under a new id is
// refused too; the very same id and address is an idempotent 200 that
// reports the member's vote.
func TestJoinWithAMembersIDOrAddressIsRefused(t *testing.T) {
	base := startAPI(t)
	nodes := func() []NodeInfo {
		var ns []NodeInfo
		if err := json.Unmarshal([]byte(body(t, call(t, "GET", base+"/api/v1/cluster/nodes", viewerTok, ""))), &ns); err != nil {
			t.Fatal(err)
		}
		return ns
	}
	before := nodes()
	if len(before) != 1 {
		t.Fatalf("nodes: %+v", before)
	}
	self := before[0]
	l, err := net.Listen("tcp", "127.0.0.1:0") // something listens: the reachability probe passes
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := l.Addr().String()

	r := call(t, "POST", base+"/api/v1/cluster/join", opTok, `{"id":"solo","raft_addr":"`+other+`","api":"http://`+other+`"}`)
	got := body(t, r)
	if r.StatusCode != http.StatusConflict || !strings.Contains(got, "zk-migrate node remove --id solo --confirm") {
		t.Fatalf("join with a member's id: %s %s", r.Status, got)
	}
	r = call(t, "POST", base+"/api/v1/cluster/join", opTok, `{"id":"c9","raft_addr":"`+self.Address+`","api":"http://`+other+`"}`)
	got = body(t, r)
	if r.StatusCode != http.StatusConflict || !strings.Contains(got, "already belongs to node solo") {
		t.Fatalf("join with a member's address: %s %s", r.Status, got)
	}
	spelled := strings.Replace(self.Address, "127.0.0.1", "localhost", 1) // the same address, spelled otherwise
	r = call(t, "POST", base+"/api/v1/cluster/join", opTok, `{"id":"c8","raft_addr":"`+spelled+`","api":"http://`+other+`"}`)
	got = body(t, r)
	if r.StatusCode != http.StatusConflict || !strings.Contains(got, "already belongs to node solo") {
		t.Fatalf("join with a member's address spelled %s: %s %s", spelled, r.Status, got)
	}
	if after := nodes(); len(after) != 1 || after[0].Address != self.Address || !after[0].Voter {
		t.Fatalf("the member moved: before %+v, after %+v", before, after)
	}
	r = call(t, "POST", base+"/api/v1/cluster/join", opTok, `{"id":"solo","raft_addr":"`+self.Address+`","api":"`+base+`"}`)
	got = body(t, r)
	if r.StatusCode != http.StatusOK || !strings.Contains(got, `"voter": true`) {
		t.Fatalf("repeated join of the same member: %s %s", r.Status, got)
	}
}

// TestOneServerSpelledTwoWaysIsOneServer: a migration over
// "localhost:P" and one over "127.0.0.1:P" with the same path share that
// server: the second is refused (409) at create while the first runs,
// and at start when both were created before either started. A host that
// does not resolve is a 400 naming it.
func TestOneServerSpelledTwoWaysIsOneServer(t *testing.T) {
	base := startAPI(t)
	mig := func(id, src, dst string) string {
		return fmt.Sprintf("migration: {id: %s, source_zk: %q, target_zk: %q, paths: [/mesos]}\n", id, src, dst)
	}
	for _, c := range []string{mig("m1", "localhost:31001", "localhost:31002"), mig("m2", "127.0.0.1:31001", "127.0.0.1:31003")} {
		if r := call(t, "POST", base+"/api/v1/migrations", opTok, c); r.StatusCode != http.StatusCreated {
			t.Fatalf("create: %s %s", r.Status, body(t, r))
		}
	}
	if r := call(t, "POST", base+"/api/v1/migrations/m1/start", opTok, ""); r.StatusCode != http.StatusOK {
		t.Fatalf("start m1: %s %s", r.Status, body(t, r))
	}
	r := call(t, "POST", base+"/api/v1/migrations/m2/start", opTok, "")
	if got := body(t, r); r.StatusCode != http.StatusConflict || !strings.Contains(got, "127.0.0.1:31001") {
		t.Fatalf("start of m2 over the same server spelled 127.0.0.1: %s %s", r.Status, got)
	}
	r = call(t, "POST", base+"/api/v1/migrations", opTok, mig("m3", "127.0.0.1:31001", "127.0.0.1:31004"))
	if got := body(t, r); r.StatusCode != http.StatusConflict || !strings.Contains(got, "m1") {
		t.Fatalf("create of m3 over the running m1's server: %s %s", r.Status, got)
	}
	r = call(t, "POST", base+"/api/v1/migrations", opTok, mig("m4", "no-such-host.invalid:2181", "127.0.0.1:31005"))
	if got := body(t, r); r.StatusCode != http.StatusBadRequest || !strings.Contains(got, "no-such-host.invalid") {
		t.Fatalf("create with an unresolvable host: %s %s", r.Status, got)
	}
}

// TestInvalidSecretIsNotEchoed: a migration.yaml with an invalid Slack
// webhook is refused (400) naming the field, without the webhook's value.
func TestInvalidSecretIsNotEchoed(t *testing.T) {
	base := startAPI(t)
	r := call(t, "POST", base+"/api/v1/migrations", opTok,
		"migration: {id: m1, source_zk: \"127.0.0.1:2181\", target_zk: \"127.0.0.1:2182\"}\nalerts: {slack_webhook: \"ftp://hooks/SLACKSECRET999\"}\n")
	got := body(t, r)
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(got, "alerts.slack_webhook") || strings.Contains(got, "SLACKSECRET999") {
		t.Fatalf("invalid webhook: %s %s", r.Status, got)
	}
}
