package main

import (
	"testing"

	"github.com/zk-migrate/zk-migrate/control"
	"github.com/zk-migrate/zk-migrate/ensemble"
)

// TestRecordedPrimaryDuringAFlipIsTheOldEpochs: the control nodes
// advertise, for a proxy that starts, the primary and the epoch it serves
// under. While a forward flip to epoch 1 is open (begun, not done), that is
// A under epoch 0, never A under 1: a proxy that took (1, A) saw the
// raised fence (1, B) as its own epoch's and served A beside its peers on
// B. Once the flip is done it is B under 1.
func TestRecordedPrimaryDuringAFlipIsTheOldEpochs(t *testing.T) {
	m := &control.Migration{ID: "m1", Primary: ensemble.Source, Epoch: 1,
		Flip: &control.Flip{Epoch: 1, Expected: []string{"p1"}, Primary: ensemble.Target}}
	st := &control.State{Migrations: map[string]*control.Migration{"m1": m}}
	if p, e := recordedPrimaryOf(st); p != ensemble.Source || e != 0 {
		t.Fatalf("flip to epoch 1 open: advertised %s at epoch %d, want A at 0", p.Flag(), e)
	}
	m.Flip.Done, m.Primary = true, ensemble.Target
	if p, e := recordedPrimaryOf(st); p != ensemble.Target || e != 1 {
		t.Fatalf("flip to epoch 1 done: advertised %s at epoch %d, want B at 1", p.Flag(), e)
	}
	m.ARetired = true
	if r := retiredOf(st, 1); r != ensemble.Source {
		t.Fatalf("phase 6 retired A: advertised retired %q", r)
	}
}
