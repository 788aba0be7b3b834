package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

// openWithHealth opens a registry on the state and health files of dir.
func openWithHealth(t *testing.T, dir string, cfg []config.Backend) (*Registry, *recorder, []string) {
	t.Helper()
	dp := &recorder{}
	r, warnings, err := Open(filepath.Join(dir, "backends.json"), services, cfg, dp.apply, HealthFile(filepath.Join(dir, "health.json"), nil))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return r, dp, warnings
}

// healthOf returns the health and detail of backend name, and the state the
// data path got for it first (at Open).
func healthOf(t *testing.T, r *Registry, dp *recorder, name string) (Health, string, model.State) {
	t.Helper()
	b, ok := r.Get(name)
	if !ok {
		t.Fatalf("no backend %q", name)
	}
	for _, d := range dp.log()[0].Set {
		if d.Name == name {
			return b.Health, b.HealthDetail, d.State
		}
	}
	t.Fatalf("backend %q not in the first set applied", name)
	return "", "", 0
}

// TestHealthFileRestart: a backend reported down stays down across a
// restart, in the data path from the first set applied, until the next
// report; a backend reported up is unknown after it, and in rotation.
func TestHealthFileRestart(t *testing.T) {
	dir := t.TempDir()
	r, _, _ := openWithHealth(t, dir, baseConfig())
	if _, err := r.ReportHealth("web1", false, "connection refused after 3 failures"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReportHealth("web2", true, "ok"); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(filepath.Join(dir, "health.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"version\": 1,\n  \"backends\": {\n    \"web1\": {\n      \"address\": \"10.0.1.11\",\n      \"check\": \"tcp://10.0.1.11:80\",\n      \"health\": \"down\",\n      \"detail\": \"connection refused after 3 failures\"\n    }\n  }\n}\n"
	if diff := cmp.Diff(want, string(file)); diff != "" {
		t.Errorf("health file: only the backend reported down (-want +got):\n%s", diff)
	}

	r, dp, warnings := openWithHealth(t, dir, baseConfig())
	if len(warnings) > 0 {
		t.Errorf("warnings: %q", warnings)
	}
	if h, d, st := healthOf(t, r, dp, "web1"); h != HealthDown || d != "connection refused after 3 failures" || st != model.Down {
		t.Errorf("web1 after the restart: %s %q, data path %v; want down, its detail, %v", h, d, st, model.Down)
	}
	if h, d, st := healthOf(t, r, dp, "web2"); h != HealthUnknown || d != "" || st != model.Active {
		t.Errorf("web2 after the restart: %s %q, data path %v; want unknown, no detail, %v", h, d, st, model.Active)
	}

	if _, err := r.ReportHealth("web1", true, "ok"); err != nil {
		t.Fatal(err)
	}
	r, dp, _ = openWithHealth(t, dir, baseConfig())
	if h, _, st := healthOf(t, r, dp, "web1"); h != HealthUnknown || st != model.Active {
		t.Errorf("web1 after a report up and a restart: %s, data path %v", h, st)
	}
}

// TestHealthFileDrops: a report is about a backend's address and check; at
// a restart the reports of backends that were removed, or whose address or
// check changed, are dropped, and the file is rewritten without them.
func TestHealthFileDrops(t *testing.T) {
	moved := baseConfig()
	moved[0].Address = addr("10.0.1.21")
	rechecked := baseConfig()
	rechecked[0].Check = "tcp://10.0.1.11:81"
	tests := []struct {
		name    string
		file    string // the health file's content before the restart; "" to report web1 down
		cfg     []config.Backend
		warning []string // fragments of the one warning
	}{
		{name: "removed backend", cfg: baseConfig()[1:]},
		{name: "address changed", cfg: moved, warning: []string{`backend "web1" was reported down at "10.0.1.11" with check "tcp://10.0.1.11:80"; its address or check changed since`}},
		{name: "check changed", cfg: rechecked, warning: []string{`backend "web1" was reported down`}},
		{name: "not JSON", file: "{", cfg: baseConfig(), warning: []string{"health.json ignored"}},
		{name: "unknown version", file: `{"version": 2, "backends": {}}`, cfg: baseConfig(), warning: []string{"health.json ignored", "version 2"}},
		{name: "unknown field", file: `{"version": 1, "backends": {}, "more": 1}`, cfg: baseConfig(), warning: []string{"health.json ignored", "unknown field"}},
		{name: "not a health", file: `{"version": 1, "backends": {"web1": {"address": "10.0.1.11", "check": "tcp://10.0.1.11:80", "health": "unknown"}}}`,
			cfg: baseConfig(), warning: []string{`health "unknown" is neither up nor down`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r, _, _ := openWithHealth(t, dir, baseConfig())
			if _, err := r.ReportHealth("web1", false, "timeout"); err != nil {
				t.Fatal(err)
			}
			if tt.file != "" {
				if err := os.WriteFile(filepath.Join(dir, "health.json"), []byte(tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r, _, warnings := openWithHealth(t, dir, tt.cfg)
			if want := min(len(tt.warning), 1); len(warnings) != want {
				t.Errorf("warnings %q, want %d", warnings, want)
			}
			for _, w := range tt.warning {
				if !strings.Contains(strings.Join(warnings, "\n"), w) {
					t.Errorf("warnings %q do not contain %q", warnings, w)
				}
			}
			for _, b := range r.List() {
				if b.Health != HealthUnknown {
					t.Errorf("%s: health %s after the restart, want unknown", b.Name, b.Health)
				}
			}
			got, err := os.ReadFile(filepath.Join(dir, "health.json"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff("{\n  \"version\": 1,\n  \"backends\": {}\n}\n", string(got)); diff != "" {
				t.Errorf("health file after the restart (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHealthFileWriteFails: a health file that cannot be written does not
// refuse a report, and is written at the next change that can.
func TestHealthFileWriteFails(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "run")
	dp := &recorder{}
	r, _, err := Open(filepath.Join(dir, "backends.json"), services, baseConfig(), dp.apply, HealthFile(filepath.Join(sub, "health.json"), nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReportHealth("web1", false, "timeout"); err != nil {
		t.Fatalf("ReportHealth with an unwritable health file: %v", err)
	}
	if b, _ := r.Get("web1"); b.Health != HealthDown {
		t.Errorf("web1: %s, want down", b.Health)
	}
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReportHealth("web2", false, "timeout"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(sub, "health.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{`"web1"`, `"web2"`} {
		if !strings.Contains(string(got), name) {
			t.Errorf("health file %s lacks %s", got, name)
		}
	}
}
