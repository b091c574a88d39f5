package ensemble

import "testing"

func TestParseAndOther(t *testing.T) {
	for in, want := range map[string]Name{"source": Source, "A": Source, "target": Target, "b": Target} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := Parse("primary"); err == nil {
		t.Error("Parse(primary) accepted")
	}
	if Source.Other() != Target || Target.Other() != Source || Target.Flag() != "target" || Names[Target.Index()] != Target {
		t.Error("Other/Flag/Index disagree")
	}
}
