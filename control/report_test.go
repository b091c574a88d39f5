package control

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestReportSeparatesWorkFromWaitingForApproval: each step's duration
// excludes the time it waited for approval (shown apart), every approval
// is listed with its author, and a failed step reads as failed in the
// report and in the audit trail.
func TestReportSeparatesWorkFromWaitingForApproval(t *testing.T) {
	s := NewState()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	must := func(c Command) {
		t.Helper()
		if err := s.Apply(c, uint64(len(s.Audit)+1)); err != nil {
			t.Fatalf("%s: %v", c.Kind, err)
		}
	}
	must(Command{Kind: CmdCreate, Migration: "m", By: "alice", Time: at(0), Config: &MigrationConfig{SourceZK: "a:1", TargetZK: "b:1", RequireApproval: true}})
	must(Command{Kind: CmdStart, Migration: "m", By: "alice", Time: at(0)})
	must(Command{Kind: CmdApprove, Migration: "m", By: "bob", Time: at(600)}) // waited 10 minutes
	must(Command{Kind: CmdStepRunning, Migration: "m", By: "executor", Time: at(600), Step: StepDeployB})
	must(Command{Kind: CmdStepSucceeded, Migration: "m", By: "executor", Time: at(630), Step: StepDeployB}) // worked 30 s
	must(Command{Kind: CmdAdvance, Migration: "m", By: "alice", Time: at(700), Step: StepFlip})
	must(Command{Kind: CmdApprove, Migration: "m", By: "carol", Time: at(760)})
	must(Command{Kind: CmdStepFailed, Migration: "m", By: "executor", Time: at(765), Step: StepFlip, Error: "barrier timed out"})
	if err := s.Apply(Command{Kind: CmdRefused, By: "mallory", Time: at(770), Migration: "m", Error: "unknown token"}, 99); err == nil {
		t.Fatal("a refusal applied as ok")
	}

	last := s.Audit[len(s.Audit)-2]
	if last.Action != string(CmdStepFailed) || last.Result != "failed: barrier timed out" {
		t.Fatalf("a failed step in the audit: %+v", last)
	}
	r := MakeReport(s, "m")
	p1, flip := r.Steps[0], r.Steps[1]
	if p1.Duration != 30*time.Second || p1.Waiting != 10*time.Minute || p1.Approver != "bob" {
		t.Fatalf("phase 1: %+v", p1)
	}
	if !flip.Failed || flip.LastError != "barrier timed out" || flip.Waiting != time.Minute || flip.Duration != 0 {
		t.Fatalf("flip: %+v", flip)
	}
	if len(r.Approvals) != 2 || r.Approvals[0].By != "bob" || r.Approvals[1].By != "carol" || r.Approvals[1].Step != "flip" {
		t.Fatalf("approvals: %+v", r.Approvals)
	}
	if r.Refused != 1 || r.Status != StatusFailed {
		t.Fatalf("report: %+v", r)
	}
	var out bytes.Buffer
	r.Print(&out)
	for _, want := range []string{"FAILED: barrier timed out", "30s", "10m0s", "by bob after 10m0s", "by carol after 1m0s", "refused commands 1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed report lacks %q:\n%s", want, out.String())
		}
	}
}
