package control

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// StepReport is one step's history in a migration.
type StepReport struct {
	Step      string        `json:"step"`
	Entered   time.Time     `json:"entered"`
	Succeeded time.Time     `json:"succeeded,omitempty"`
	Duration  time.Duration `json:"duration_ns,omitempty"`
	Failures  int           `json:"failures"`
	Approver  string        `json:"approved_by,omitempty"`
}

// Report summarizes a migration from its audit trail (post-migration
// report).
type Report struct {
	Migration string        `json:"migration"`
	Status    Status        `json:"status"`
	Primary   string        `json:"primary"`
	Started   time.Time     `json:"started"`
	Finished  time.Time     `json:"finished,omitempty"`
	Duration  time.Duration `json:"duration_ns,omitempty"`
	Steps     []StepReport  `json:"steps"`
	Rollbacks int           `json:"rollbacks"`
	Refused   int           `json:"refused_commands"`
	Flip      *Flip         `json:"flip,omitempty"`
}

// MakeReport builds the report of migration id, or nil if it is unknown.
func MakeReport(s *State, id string) *Report {
	m := s.Migrations[id]
	if m == nil {
		return nil
	}
	r := &Report{Migration: id, Status: m.Status, Primary: m.Primary, Flip: m.Flip}
	byStep := map[string]*StepReport{}
	step := func(name string, t time.Time) *StepReport {
		if sr := byStep[name]; sr != nil {
			return sr
		}
		r.Steps = append(r.Steps, StepReport{Step: name, Entered: t})
		sr := &r.Steps[len(r.Steps)-1]
		byStep[name] = sr
		return sr
	}
	for _, e := range s.Audit {
		if e.Migration != id {
			continue
		}
		if e.Result != "ok" {
			r.Refused++
			continue
		}
		name := strings.TrimPrefix(e.Detail, "step=")
		if i := strings.IndexByte(name, ' '); i >= 0 {
			name = name[:i]
		}
		switch Kind(e.Action) {
		case CmdStart:
			r.Started = e.Time
			step(StepDeployB.String(), e.Time)
		case CmdAdvance:
			step(name, e.Time)
		case CmdApprove:
			step(m.Step.String(), e.Time).Approver = e.By
		case CmdStepFailed:
			step(name, e.Time).Failures++
		case CmdStepSucceeded:
			sr := step(name, e.Time)
			sr.Succeeded = e.Time
			sr.Duration = e.Time.Sub(sr.Entered)
			if name == StepRemoveA.String() {
				r.Finished = e.Time
				r.Duration = e.Time.Sub(r.Started)
			}
		case CmdRollback:
			r.Rollbacks++
		}
	}
	return r
}

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "migration %s: %s, primary ensemble %s\n", r.Migration, r.Status, r.Primary)
	if !r.Finished.IsZero() {
		fmt.Fprintf(w, "started %s, finished %s (%v)\n", r.Started.Format(time.RFC3339), r.Finished.Format(time.RFC3339), r.Duration.Round(time.Second))
	}
	for _, s := range r.Steps {
		took := "-"
		if s.Duration > 0 {
			took = s.Duration.Round(time.Millisecond).String()
		}
		extra := ""
		if s.Failures > 0 {
			extra += fmt.Sprintf(", %d failure(s)", s.Failures)
		}
		if s.Approver != "" {
			extra += ", approved by " + s.Approver
		}
		fmt.Fprintf(w, "  %-20s %10s%s\n", s.Step, took, extra)
	}
	if r.Flip != nil {
		fmt.Fprintf(w, "flip: epoch %d, %d proxies acknowledged, %d fenced %v\n", r.Flip.Epoch, len(r.Flip.Acked), len(r.Flip.Fenced), r.Flip.Fenced)
	}
	fmt.Fprintf(w, "rollbacks %d, refused commands %d\n", r.Rollbacks, r.Refused)
}
