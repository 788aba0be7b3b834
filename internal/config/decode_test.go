package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// DecodeStrict on a struct with every kind of field the raw structs may
// use: wrong types and unknown keys are each one error with its line, and
// everything else is decoded.
func TestDecodeStrict(t *testing.T) {
	type sub struct {
		Name string `toml:"name"`
	}
	type entry struct {
		Name string `toml:"name"`
		Subs []sub  `toml:"sub"`
	}
	type doc struct {
		Small   int8             `toml:"small"`
		Count   uint16           `toml:"count"`
		Ratio   float64          `toml:"ratio"`
		On      bool             `toml:"on"`
		Name    *string          `toml:"name"`
		Tags    []string         `toml:"tags"`
		Ports   map[string][]int `toml:"ports"`
		Entries []entry          `toml:"entry"`
		Mixed   []any            `toml:"mixed"`
		Section *struct {
			Size int `toml:"size"`
		} `toml:"section"`
	}
	data := `small = 300
count = -1
ratio = 2
on = "yes"
name = "n"
tags = ["a", 2, "c"]
"quoted.key" = 1
mixed = [80, "8000-8099", 1.5]

[ports]
"10.0.0.1" = [80]
"10.0.0.2" = "443"

[[entry]]
name = "first"

[[entry.sub]]
name = "a"

[[entry]]
name = "second"
size = 3

[[entry.sub]]
name = "b"
[[entry.sub]]
name = "c"
colour = "red"

[section]
size = 5
`
	var got doc
	errs, err := DecodeStrict([]byte(data), &got)
	if err != nil {
		t.Fatalf("DecodeStrict: %v", err)
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	want := []string{
		`line 1: small: 300 is out of range`,
		`line 2: count: -1 is out of range`,
		`line 4: on: must be true or false, not a string`,
		`line 6: tags: element 2: must be a string, not an integer`,
		`line 7: unknown key "\"quoted.key\""`,
		`line 12: ports."10.0.0.2": must be an array, not a string`,
		`line 22: unknown key "entry.size"`,
		`line 28: unknown key "entry.sub.colour"`,
	}
	if diff := cmp.Diff(want, msgs); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	name := "n"
	wantDoc := doc{
		Ratio: 2, Name: &name, Tags: []string{"a", "c"},
		Ports:   map[string][]int{"10.0.0.1": {80}},
		Entries: []entry{{Name: "first", Subs: []sub{{Name: "a"}}}, {Name: "second", Subs: []sub{{Name: "b"}, {Name: "c"}}}},
		Mixed:   []any{int64(80), "8000-8099", 1.5},
		Section: &struct {
			Size int `toml:"size"`
		}{Size: 5},
	}
	if diff := cmp.Diff(wantDoc, got); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}
}
