package sandbox

import (
	"context"
	"strings"
	"testing"
)

// TestChaosAtRefusesMomentsTheRunNeverReaches: a chaos moment the run
// never reaches would inject nothing while the report looked as if it had;
// it is refused with the reason.
func TestChaosAtRefusesMomentsTheRunNeverReaches(t *testing.T) {
	for _, tc := range []struct {
		at       []string
		rollback int
		refused  string
	}{
		{[]string{"flip", "2", "3", "4", "5"}, 0, ""},
		{[]string{"flip", "2", "3", "rollback"}, 3, ""},
		{[]string{"6"}, 0, `"6": want any of`},
		{[]string{"4"}, 3, "phase 4 never runs when the migration is rolled back after phase 3"},
		{[]string{"rollback"}, 0, "the run has no rollback"},
	} {
		err := CheckChaosAt(tc.at, tc.rollback)
		if tc.refused == "" && err != nil || tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)) {
			t.Errorf("CheckChaosAt(%v, rollback %d) = %v, want %q", tc.at, tc.rollback, err, tc.refused)
		}
	}
}

// TestReportKeepsWhatAKilledProxyCounted: a proxy SIGKILLed by chaos
// restarts with its counters at 0; what it had counted (read just before
// the kill) stays in the report's figures, so a session it expired is
// still counted and the mirror's figures never go negative.
func TestReportKeepsWhatAKilledProxyCounted(t *testing.T) {
	d := &demo{killedMetrics: []map[string]float64{{
		"zkmigrate_proxy_sessions_expired_total":                2,
		"zkmigrate_proxy_mirror_delay_seconds_sum":              0.5,
		"zkmigrate_proxy_mirror_delay_seconds_count":            5,
		`zkmigrate_proxy_mirror_delay_seconds_bucket{le="0.1"}`: 4,
		`zkmigrate_proxy_mirror_delay_seconds_bucket{le="1"}`:   5,
	}}}
	h, expired, err := d.mirrorStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if expired != 2 || h.count != 5 || h.sum != 0.5 || len(h.buckets) != 2 {
		t.Fatalf("mirrorStats without the killed proxy's counts: expired %d, %+v", expired, h)
	}
}
