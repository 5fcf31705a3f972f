package selector

import "testing"

func TestMatches(t *testing.T) {
	labels := map[string]string{"zone": "a", "kubernetes.io/os": "linux", "gpu": ""}
	for sel, want := range map[string]bool{
		"":                   true,
		"all()":              true,
		"has(gpu)":           true,
		"!has(gpu)":          false,
		`zone == "a"`:        true,
		`zone != 'a'`:        false,
		`missing != "x"`:     true,
		`zone in {"b", "a"}`: true,
		`zone not in {"a"}`:  false,
		`kubernetes.io/os == "linux" && zone == "b"`: false,
		`zone == "b" || has(gpu) && zone == "a"`:     true,
		`!(zone == "a")`:                             false,
	} {
		s, err := Parse(sel)
		if err != nil {
			t.Errorf("Parse(%q): %v", sel, err)
			continue
		}
		if got := s.Matches(labels); got != want {
			t.Errorf("%q matches = %v, want %v", sel, got, want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, sel := range []string{"zone", `zone == a`, `zone == "a`, `has(zone`, `(zone == "a"`, `zone in {"a"`, `zone == "a" extra`, "&&"} {
		if _, err := Parse(sel); err == nil {
			t.Errorf("Parse(%q) accepted", sel)
		}
	}
}
