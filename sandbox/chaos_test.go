package sandbox

import (
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
