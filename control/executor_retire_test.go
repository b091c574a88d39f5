package control

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/zk-migrate/zk-migrate/ensemble"
)

// retiringFleet is a fleet whose proxies retire A (Retirer); those in
// refuse do not, and rec hears each retire request, so the test sees it
// comes between phase 6's run and its verify.
type retiringFleet struct {
	fleet
	rec    *recorder
	rmu    sync.Mutex
	refuse map[string]string
	asked  [][]string
}

func (f *retiringFleet) Retire(_ context.Context, migration string, old ensemble.Name, proxies []string) (map[string]string, error) {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	f.rec.note("retire "+string(old), &Migration{ID: migration, Step: StepRemoveA})
	f.asked = append(f.asked, proxies)
	failed := map[string]string{}
	for _, p := range proxies {
		if why, ok := f.refuse[p]; ok {
			failed[p] = why
		}
	}
	return failed, nil
}

// TestPhase6RetiresTheProxiesBeforeItsCheck: phase 6 asks every live
// proxy to retire A after its run (A's processes and the sync stopped)
// and before its verify (no session left on A); a proxy that does not
// retire A fails the phase by name with the remediation, the rollback is
// refused from then on (a proxy that retired A cannot serve from it), and
// a retry once the proxy answers completes the migration.
func TestPhase6RetiresTheProxiesBeforeItsCheck(t *testing.T) {
	f := &retiringFleet{fleet: fleet{proxies: []string{"proxy-1", "proxy-2"}},
		refuse: map[string]string{"proxy-2": "no answer: context deadline exceeded"}}
	_, p, rec := newExecutor(t, f)
	f.rmu.Lock()
	f.rec = rec // before the migration starts: the executor reads it in phase 6
	f.rmu.Unlock()
	runTo(t, p, StepDrainAgentsA)
	if err := op(p, CmdAdvance, StepRemoveA); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, p, StepRemoveA, StatusFailed)
	if !strings.Contains(m.LastError, "proxy-2 (no answer") || strings.Contains(m.LastError, "proxy-1") ||
		!strings.Contains(m.LastError, "restart each named proxy") || !strings.Contains(m.LastError, "remove it from the fleet") {
		t.Fatalf("phase 6 failure: %q, want proxy-2 named with the remediation", m.LastError)
	}
	if !m.ARetired {
		t.Fatal("retire-a not recorded")
	}
	if err := op(p, CmdRollback, StepDrainAgentsA); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "retired ensemble A") {
		t.Fatalf("rollback after the proxies were asked to retire A: %v, want refused", err)
	}
	f.rmu.Lock()
	delete(f.refuse, "proxy-2") // restarted: it answers now
	f.rmu.Unlock()
	if err := op(p, CmdRetry, 0); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, p, StepDone, StatusCompleted)
	var tail []string
	for _, c := range rec.log() {
		if strings.HasSuffix(c, StepRemoveA.String()) {
			tail = append(tail, c)
		}
	}
	want := "run 6-remove-a,retire A 6-remove-a,run 6-remove-a,retire A 6-remove-a,verify 6-remove-a"
	if strings.Join(tail, ",") != want {
		t.Fatalf("phase 6 calls: %v, want %s", tail, want)
	}
	f.rmu.Lock()
	defer f.rmu.Unlock()
	if len(f.asked) != 2 || strings.Join(f.asked[1], ",") != "proxy-1,proxy-2" {
		t.Fatalf("retire asked %v, want every live proxy each time", f.asked)
	}
	if err := op(p, CmdRollback, StepDrainAgentsA); err == nil {
		t.Fatal("rollback after phase 6 accepted")
	}
}
