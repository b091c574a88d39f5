package sandbox

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestRegisterModel: the version model accepts what ZooKeeper does
// (concurrent blind and conditional writes, a lost answer applied or not)
// and refuses a skipped version (a write nobody made, or one applied
// twice), a conditional write that succeeded against the wrong version,
// and a BADVERSION that should have succeeded.
func TestRegisterModel(t *testing.T) {
	op := func(client int, call, ret int64, in regInput, out regOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
	}
	blind := regInput{}
	cond := func(v int32) regInput { return regInput{Cond: true, Expect: v} }
	ok := func(v int32) regOutput { return regOutput{OK: true, Version: v} }
	bad := regOutput{}
	unknown := regOutput{Unknown: true}
	for _, c := range []struct {
		name string
		ops  []porcupine.Operation
		want bool
	}{
		{"sequential", []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, cond(1), ok(2)), op(0, 4, 5, cond(1), bad)}, true},
		{"concurrent conditional: one wins", []porcupine.Operation{op(0, 0, 10, cond(0), ok(1)), op(1, 1, 9, cond(0), bad)}, true},
		{"unknown outcome, applied", []porcupine.Operation{op(0, 0, math.MaxInt64, blind, unknown), op(1, 5, 6, blind, ok(2))}, true},
		{"unknown outcome, not applied", []porcupine.Operation{op(0, 0, math.MaxInt64, cond(7), unknown), op(1, 5, 6, blind, ok(1))}, true},
		{"skipped version", []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, blind, ok(3))}, false},
		{"duplicated version", []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, blind, ok(1))}, false},
		{"conditional on a stale version succeeded", []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, cond(0), ok(2))}, false},
		{"badversion that matched", []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, cond(1), bad)}, false},
	} {
		if got := porcupine.CheckOperations(registerModel, c.ops); got != c.want {
			t.Errorf("%s: linearizable %v, want %v", c.name, got, c.want)
		}
	}
	r := &register{ops: []porcupine.Operation{op(0, 0, 1, blind, ok(1)), op(1, 2, 3, blind, ok(4)), op(2, 4, 5, blind, ok(4))}}
	if dups, skipped, _ := r.versionGaps(0); dups != 1 || skipped != 2 {
		t.Errorf("versionGaps: %d duplicated, %d skipped; want 1 and 2", dups, skipped)
	}
}

// TestReportFailsOnANonLinearizableRegister: the demo's verdict judges the
// register history. A history like the one the demo's rollback produced
// before the replicator kept the reverse flip's primary (versions written
// onto the new primary by no client, then a version acknowledged twice)
// turns the verdict to FAIL, and the report names the writes around each
// anomaly with their proxies and times; the same run with a legal history
// (a skipped version a write of unknown outcome accounts for) passes.
func TestReportFailsOnANonLinearizableRegister(t *testing.T) {
	op := func(client int, call, ret float64, in regInput, out regOutput) porcupine.Operation {
		r := int64(ret * 1e9)
		if math.IsInf(ret, 1) {
			r = math.MaxInt64
		}
		return porcupine.Operation{ClientId: client, Input: in, Call: int64(call * 1e9), Output: out, Return: r}
	}
	ok := func(v int32) regOutput { return regOutput{OK: true, Version: v} }
	names := []string{"proxy-1", "proxy-2", "proxy-framework"}
	dir := ""
	judge := func(ops []porcupine.Operation) (MigrationReport, string) {
		dir = t.TempDir()
		d := &demo{cfg: MigrationConfig{Dir: dir}, out: io.Discard, start: time.Now().Add(-9 * time.Second)}
		rep := MigrationReport{Completed: true, DigestsEqual: true, DirectWrites: 1}
		d.checkRegister(&rep, &register{start: d.start.Add(9 * time.Second), names: names, ops: ops})
		var b strings.Builder
		printMigrationReport(&b, rep)
		return rep, b.String()
	}
	illegal := []porcupine.Operation{
		op(0, 1.0, 1.1, regInput{}, ok(1)),
		op(1, 1.2, 1.3, regInput{Cond: true, Expect: 1}, ok(2)),
		op(0, 1.4, 1.5, regInput{}, ok(6)), // 3-5: no client's write
		op(2, 2.0, 3.0, regInput{}, ok(6)), // 6 again
	}
	rep, out := judge(illegal)
	if rep.OK() || rep.Linearizable != "Illegal" {
		t.Fatalf("an illegal register history passed the verdict (linearizable %q)", rep.Linearizable)
	}
	for _, want := range []string{
		"register history             Illegal   (must be Ok",
		"NOT LINEARIZABLE: 1 versions acknowledged twice, 3 to no client",
		"versions 3-5 acknowledged to no client (writes of unknown outcome begun by then: 0), between client 1 (proxy-2) set(1) -> version 2, 10.200s to 10.300s and client 0 (proxy-1) set(-1) -> version 6, 10.400s to 10.500s",
		"version 6 acknowledged 2 times: client 0 (proxy-1) set(-1) -> version 6, 10.400s to 10.500s; client 2 (proxy-framework) set(-1) -> version 6, 11.000s to 12.000s",
		"verdict                      FAIL",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "register.html")); err != nil {
		t.Errorf("no drawing of the illegal history: %v", err)
	}
	legal := []porcupine.Operation{
		op(0, 1.0, 1.1, regInput{}, ok(1)),
		op(1, 1.2, math.Inf(1), regInput{}, regOutput{Unknown: true}), // took effect: version 2
		op(0, 1.4, 1.5, regInput{}, ok(3)),
	}
	rep, out = judge(legal)
	if !rep.OK() || !strings.Contains(out, "register history             Ok") || !strings.Contains(out, "1 versions acknowledged to no client: writes of unknown outcome") ||
		!strings.Contains(out, "verdict                      PASS") {
		t.Errorf("a legal register history (a write of unknown outcome applied) did not pass: OK %v\n%s", rep.OK(), out)
	}
}
