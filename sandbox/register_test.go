package sandbox

import (
	"math"
	"testing"

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
	if dups, skipped, _, _ := r.versionGaps(); dups != 1 || skipped != 2 {
		t.Errorf("versionGaps: %d duplicated, %d skipped; want 1 and 2", dups, skipped)
	}
}
