package registry

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

func TestPersistenceRoundTrip(t *testing.T) {
	f := newFixture(t, baseConfig())
	steps := []func() error{
		func() error {
			_, err := f.r.Add("web8", "10.0.1.18", AddOptions{Weight: ptr[uint32](300), Check: "tcp://10.0.1.18:80"})
			return err
		},
		func() error { _, err := f.r.Add("web9", "10.0.1.19", AddOptions{Runtime: true}); return err },
		func() error { return f.r.SetWeight("web1", 50) },
		func() error { return f.r.Drain("web2") },
		func() error { return f.r.Drain("web8") },
		func() error { return f.r.SetWeight("web9", 5) },
		func() error { _, err := f.r.ReportHealth("web1", false, "refused"); return err },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	// The file's exact form, once.
	want := `{
  "version": 2,
  "backends": [
    {
      "name": "web8",
      "service": "default",
      "address": "10.0.1.18",
      "weight": 300,
      "check": "tcp://10.0.1.18:80"
    }
  ],
  "overrides": {
    "web1": {
      "weight": 50
    },
    "web2": {
      "drained": true
    },
    "web8": {
      "drained": true
    }
  }
}
`
	if diff := cmp.Diff(want, readState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(f.path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("state file mode: %v, %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(f.dir); len(ents) != 1 {
		t.Errorf("the state directory holds more than the state file: %v", ents)
	}
	before, _ := os.Stat(f.path)

	if w := f.open(t, baseConfig()); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}
	wantList := []Backend{
		be(1, "web1", "10.0.1.11", 50, check("tcp://10.0.1.11:80")),
		be(2, "web2", "10.0.1.12", 200, drained),
		be(3, "web8", "10.0.1.18", 300, fromRuntime(true), check("tcp://10.0.1.18:80"), drained),
	}
	if diff := cmp.Diff(wantList, f.r.List(), cmpOpts); diff != "" {
		t.Errorf("after reopening: List (-want +got):\n%s", diff)
	}
	wantApply := []applyCall{{Set: dataPath(wantList), OK: true}}
	if diff := cmp.Diff(wantApply, f.dp.log(), cmpOpts); diff != "" {
		t.Errorf("after reopening: apply calls (-want +got):\n%s", diff)
	}
	if after, _ := os.Stat(f.path); !os.SameFile(before, after) {
		t.Errorf("Open rewrote a state file with nothing to drop")
	}
}

// TestPrecedence: the configuration file wins over run-time registrations
// of the same name or address; the losers and orphaned overrides are
// dropped with warnings and the file is rewritten.
func TestPrecedence(t *testing.T) {
	f := &fixture{dir: t.TempDir()}
	f.path = filepath.Join(f.dir, "backends.json")
	writeState(t, f.path, `{"version": 1,
	  "backends": [
	    {"name": "web3", "service": "default", "address": "10.0.1.13", "weight": 10},
	    {"name": "web4", "service": "default", "address": "10.0.1.12", "weight": 10},
	    {"name": "web5", "service": "default", "address": "10.0.0.100", "weight": 10},
	    {"name": "web6", "service": "default", "address": "10.0.1.16", "weight": 10, "check": "udp://10.0.1.16:53?send=text:ping"}
	  ],
	  "overrides": {"web3": {"drained": true}, "web4": {"weight": 1}, "gone": {"weight": 2}, "web6": {"weight": 3}, "web2": {}}
	}`)
	cfg := append(baseConfig(), config.Backend{Service: config.DefaultService, Name: "web3", Address: addr("10.0.1.23"), Weight: 100})
	warnings := f.open(t, cfg)
	wantWarnings := []string{
		"state file " + f.path + `: run-time backend "web3" (10.0.1.13) dropped: the configuration file defines a backend of that name, which wins`,
		"state file " + f.path + `: run-time backend "web4" (10.0.1.12) dropped: the configuration file gives its address to backend "web2" of the same service, which wins`,
		"state file " + f.path + `: run-time backend "web5" (10.0.0.100) dropped: its address is a VIP of this balancer`,
		"state file " + f.path + `: override of backend "gone" (weight 2) dropped: no such backend any more`,
		"state file " + f.path + `: override of backend "web4" (weight 1) dropped: no such backend any more`,
	}
	if diff := cmp.Diff(wantWarnings, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	want := append(base(),
		be(3, "web3", "10.0.1.23", 100, drained),
		be(4, "web6", "10.0.1.16", 3, fromRuntime(true), check("udp://10.0.1.16:53?send=text:ping")))
	if diff := cmp.Diff(want, f.r.List(), cmpOpts); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	wantFile := file(`{"name":"web6","service":"default","address":"10.0.1.16","weight":10,"check":"udp://10.0.1.16:53?send=text:ping"}`, `"web3":{"drained":true},"web6":{"weight":3}`)
	if diff := cmp.Diff(wantFile, compactState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
}

func writeState(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptStateFile(t *testing.T) {
	long := strings.Repeat("n", 100_000)
	echo := `"` + strings.Repeat("n", 64) + `"…`
	tests := []struct {
		name, content string
		frag          string
	}{
		{"empty", ``, "not valid JSON"},
		{"truncated", `{"version": 1, "backends": [`, "not valid JSON"},
		{"not JSON", `web8 10.0.1.18`, "not valid JSON"},
		{"trailing data", `{"version": 1} {}`, "not valid JSON"},
		{"no version", `{"backends": []}`, `no "version" field`},
		{"bad service", `{"version": 2, "services": [{"name": "x", "vips": ["10.0.0.1"], "ports": "0", "protocols": "tcp", "hash": "5-tuple", "table_size": 251}], "backends": []}`,
			`services[0] "x": ports: port 0: must be between 1 and 65535`},
		{"services in version 1", `{"version": 1, "services": [{"name": "x"}], "backends": []}`, `version 1 has no "services"`},
		{"newer version", `{"version": 3, "backends": [], "shiny": true}`, "version 3 is not supported"},
		{"unknown field", `{"version": 1, "backends": [], "overrides": {}, "extra": 1}`, `unknown field "extra"`},
		{"unknown backend field", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": 1, "port": 80}]}`, `unknown field "port"`},
		{"unknown override field", `{"version": 1, "overrides": {"web1": {"weight": 1, "drain": true}}}`, `unknown field "drain"`},
		{"wrong type", `{"version": 1, "backends": {}}`, "not a valid state file"},
		{"negative weight", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": -1}]}`, "not a valid state file"},
		{"bad address", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.0.300", "weight": 1}]}`, `backends[0] "a": address "10.0.0.300": not an IP address`},
		{"bad name", `{"version": 1, "backends": [{"name": "a/b", "service": "default", "address": "10.0.1.1", "weight": 1}]}`, `backends[0] "a/b": name: must be`},
		{"no weight", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1"}]}`, `backends[0] "a": weight: missing`},
		{"weight too big", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": 10001}]}`, "weight 10001: must be between 0 and 10000"},
		{"bad check", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": 1, "check": "x"}]}`, `check "x": not a check spec`},
		{"name twice", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": 1}, {"name": "a", "service": "default", "address": "10.0.1.2", "weight": 1}]}`, `backends[1] "a": name: already used by another backend`},
		{"address twice", `{"version": 1, "backends": [{"name": "a", "service": "default", "address": "10.0.1.1", "weight": 1}, {"name": "b", "service": "default", "address": "10.0.1.1", "weight": 1}]}`, `backends[1] "b": address 10.0.1.1: already used by backend "a"`},
		{"bad override", `{"version": 1, "overrides": {"a b": {"weight": 20000}}}`, `overrides "a b": name: must be`},
		// Long values are repeated as a short prefix (quote.Q).
		{"long name and address", `{"version": 1, "backends": [{"name": "` + long + `", "service": "default", "address": "` + long + `", "weight": 1}]}`,
			`backends[0] ` + echo + `: name: must be 1-64 characters of A-Z a-z 0-9 . _ -; backends[0] ` + echo + `: address ` + echo + `: not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "backends.json")
			writeState(t, path, tt.content)
			dp := &recorder{}
			r, _, err := Open(path, services, baseConfig(), dp.apply)
			if r != nil {
				t.Errorf("Open returned a registry")
			}
			checkErr(t, err, ErrFailed, "state file "+path+": ", tt.frag, "fix it, or move it away")
			if n := len(err.Error()); n > 1024 {
				t.Errorf("a %d-byte error message", n)
			}
			if len(dp.log()) > 0 {
				t.Errorf("Open applied a set from a corrupt state file")
			}
			if got := readState(t, path); got != tt.content {
				t.Errorf("Open changed the corrupt state file")
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	cause := errors.New("no route")
	tests := []struct {
		name  string
		path  string
		cfg   []config.Backend
		apply func(model.Set) error
		kind  error
		frags []string
	}{
		{"no state path", "", baseConfig(), nil, ErrInvalidArgument, []string{"no state file path"}},
		{"state path is a directory", dir, baseConfig(), nil, ErrFailed, []string{"state file " + dir}},
		{"apply fails", filepath.Join(dir, "backends.json"), baseConfig(), func(model.Set) error { return cause }, ErrFailed, []string{"no route"}},
		{"invalid configuration", filepath.Join(dir, "backends.json"),
			[]config.Backend{{Service: config.DefaultService, Name: "web1", Address: addr("127.0.0.1"), Weight: 1}}, nil, ErrInvalidArgument,
			[]string{`backend "web1": address "127.0.0.1": loopback address, need one reachable from other hosts`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			apply := tt.apply
			if apply == nil {
				apply = (&recorder{}).apply
			}
			_, _, err := Open(tt.path, services, tt.cfg, apply)
			checkErr(t, err, tt.kind, tt.frags...)
		})
	}
}

// TestMissingStateDirectory: a state path in a directory that does not
// exist opens as empty; every persistent change then fails with ErrFailed,
// after putting the old set back in the data path, and changes nothing;
// the changes that need no file still work.
func TestMissingStateDirectory(t *testing.T) {
	f := &fixture{dir: t.TempDir()}
	f.path = filepath.Join(f.dir, "missing", "backends.json")
	f.open(t, baseConfig())
	f.w.take()
	before := f.snapshot(t)
	calls := len(f.dp.log())
	_, err := f.r.Add("web8", "10.0.1.18", AddOptions{})
	checkErr(t, err, ErrFailed, `adding backend "web8": writing the state file `+f.path, "no such file or directory", "nothing changed")
	if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
		t.Errorf("a failed change changed something (-want +got):\n%s", diff)
	}
	// The new set was applied, then the old one again.
	newSet := dataPath(append(base(), be(3, "web8", "10.0.1.18", 100, fromRuntime(true))))
	want := []applyCall{{Set: newSet, OK: true}, {Set: dataPath(base()), OK: true}}
	if diff := cmp.Diff(want, f.dp.log()[calls:], cmpOpts); diff != "" {
		t.Errorf("apply calls (-want +got):\n%s", diff)
	}
	// No file needed: these work.
	if _, err := f.r.Add("web9", "10.0.1.19", AddOptions{Runtime: true}); err != nil {
		t.Errorf("run-time-only Add: %v", err)
	}
	if _, err := f.r.ReportHealth("web1", false, "x"); err != nil {
		t.Errorf("ReportHealth: %v", err)
	}
}

// TestStateWriteFailure makes the state file unwritable for every kind of
// persistent change (its directory replaced by a file): ErrFailed, the old
// set re-applied, nothing changed, the file as it was.
func TestStateWriteFailure(t *testing.T) {
	tests := []struct {
		name string
		op   func(*Registry) error
	}{
		{"add", func(r *Registry) error { _, err := r.Add("web9", "10.0.1.19", AddOptions{}); return err }},
		{"remove", func(r *Registry) error { return r.Remove("web8") }},
		{"set weight", func(r *Registry) error { return r.SetWeight("web1", 1) }},
		{"drain", func(r *Registry) error { return r.Drain("web1") }},
		{"undrain", func(r *Registry) error { return r.Undrain("web2") }},
		{"reload dropping an override", func(r *Registry) error { _, err := r.Reload(services, baseConfig()[:1]); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			f := &fixture{dir: filepath.Join(root, "state")}
			f.path = filepath.Join(f.dir, "backends.json")
			if err := os.Mkdir(f.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			f.open(t, baseConfig())
			if _, err := f.r.Add("web8", "10.0.1.18", AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := f.r.Drain("web2"); err != nil {
				t.Fatal(err)
			}
			f.w.take()
			before := f.snapshot(t)
			calls := len(f.dp.log())

			moved := f.dir + ".moved"
			if err := os.Rename(f.dir, moved); err != nil {
				t.Fatal(err)
			}
			writeState(t, f.dir, "a file where the directory was")
			err := tt.op(f.r)
			if err := os.Remove(f.dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(moved, f.dir); err != nil {
				t.Fatal(err)
			}

			checkErr(t, err, ErrFailed, "writing the state file "+f.path, "not a directory", "nothing changed")
			if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
				t.Errorf("a failed change changed something (-want +got):\n%s", diff)
			}
			log := f.dp.log()[calls:]
			if len(log) != 2 || !log[0].OK || !log[1].OK {
				t.Fatalf("apply calls: %+v, want the new set then the old one", log)
			}
			if diff := cmp.Diff(before.Installed, log[1].Set, cmpOpts); diff != "" {
				t.Errorf("re-applied set (-want +got):\n%s", diff)
			}
			// With the directory back, the same change works.
			if err := tt.op(f.r); err != nil {
				t.Errorf("after the directory came back: %v", err)
			}
		})
	}
}

// TestSyncFailureAfterRename: when the directory fsync fails after the
// rename, the previous content is put back; when even that fails, the next
// change rewrites the file.
func TestSyncFailureAfterRename(t *testing.T) {
	f := newFixture(t, baseConfig())
	if err := f.r.Drain("web2"); err != nil {
		t.Fatal(err)
	}
	f.w.take()
	before := f.snapshot(t)

	real := syncDir
	t.Cleanup(func() { syncDir = real })
	fails := 1
	syncDir = func(dir string) error {
		if fails > 0 {
			fails--
			return errors.New("EIO")
		}
		return real(dir)
	}
	checkErr(t, f.r.SetWeight("web1", 1), ErrFailed, "EIO", "nothing changed")
	if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	// Both the write and putting the old content back fail: the file's
	// content is unknown, and the next change writes it even if its own
	// content equals what the registry last wrote.
	fails = 2
	err := f.r.SetWeight("web1", 1)
	checkErr(t, err, ErrFailed, "putting the previous content back")
	if !f.r.diskUnknown {
		t.Fatalf("disk content not marked unknown")
	}
	if _, err := f.r.ReportHealth("web1", true, ""); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(file("", `"web2":{"drained":true}`), compactState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
	if f.r.diskUnknown {
		t.Errorf("disk content still unknown after a successful write")
	}
}

// TestRollbackFailure: the write fails and so does re-applying the old
// set: both causes are reported, and the next change applies its set even
// if it equals the last one applied.
func TestRollbackFailure(t *testing.T) {
	f := &fixture{dir: t.TempDir()}
	f.path = filepath.Join(f.dir, "missing", "backends.json")
	f.open(t, baseConfig())
	n := len(f.dp.log())
	f.dp.setFailFunc(func(call int) error {
		if call == n+1 {
			return errors.New("netlink busy")
		}
		return nil
	})
	err := f.r.Drain("web1")
	checkErr(t, err, ErrFailed, "no such file or directory", "restoring the previous backend set in the data path failed too: netlink busy")
	if diff := cmp.Diff(base(), f.r.List(), cmpOpts); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	// A change without a new data-path set still re-applies.
	if _, err := f.r.ReportHealth("web1", true, ""); err != nil {
		t.Fatal(err)
	}
	log := f.dp.log()
	if last := log[len(log)-1]; !last.OK || len(log) != n+3 {
		t.Fatalf("apply calls after the failed rollback: %+v", log[n:])
	}
	if diff := cmp.Diff(dataPath(base()), f.dp.installed(), cmpOpts); diff != "" {
		t.Errorf("data path (-want +got):\n%s", diff)
	}
}

func TestReload(t *testing.T) {
	cfg := append(baseConfig(), config.Backend{Service: config.DefaultService, Name: "web3", Address: addr("10.0.1.13"), Weight: 100})
	f := newFixture(t, cfg)
	setup := []func() error{
		func() error { _, err := f.r.Add("web8", "10.0.1.18", AddOptions{}); return err },                       // ID 4
		func() error { _, err := f.r.Add("web9", "10.0.1.19", AddOptions{Runtime: true}); return err },          // ID 5
		func() error { _, err := f.r.Add("web7", "10.0.1.17", AddOptions{Weight: ptr[uint32](7)}); return err }, // ID 6
		func() error { return f.r.SetWeight("web1", 50) },
		func() error { return f.r.Drain("web3") },
		func() error { return f.r.Drain("web8") },
		func() error { _, err := f.r.ReportHealth("web1", true, "ok"); return err },
		func() error { _, err := f.r.ReportHealth("web2", false, "refused"); return err },
	}
	for i, s := range setup {
		if err := s(); err != nil {
			t.Fatalf("setup %d: %v", i, err)
		}
	}
	f.w.take()
	warnings, err := f.r.Reload(services, []config.Backend{
		// web1 moves: health reset, ID and weight override kept.
		{Service: config.DefaultService, Name: "web1", Address: addr("10.0.1.21"), Weight: 150, Check: "tcp://10.0.1.21:80"},
		// web2 stays as it is; web3 goes.
		baseConfig()[1],
		// web8 moves into the configuration file; its drain stays.
		{Service: config.DefaultService, Name: "web8", Address: addr("10.0.1.28"), Weight: 100},
		// web4 takes web7's address.
		{Service: config.DefaultService, Name: "web4", Address: addr("10.0.1.17"), Weight: 40},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantWarnings := []string{
		`run-time backend "web7" (10.0.1.17) dropped: the configuration file gives its address to backend "web4" of the same service, which wins`,
		`run-time backend "web8" (10.0.1.18) dropped: the configuration file defines a backend of that name, which wins`,
		`override of backend "web3" (drained) dropped: no such backend any more`,
	}
	if diff := cmp.Diff(wantWarnings, warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	web1 := be(1, "web1", "10.0.1.21", 50, check("tcp://10.0.1.21:80"))
	web2 := be(2, "web2", "10.0.1.12", 200, health(HealthDown, "refused"))
	web4 := be(7, "web4", "10.0.1.17", 40)
	web8 := be(4, "web8", "10.0.1.28", 100, drained)
	web9 := be(5, "web9", "10.0.1.19", 100, fromRuntime(false))
	want := []Backend{web1, web2, web4, web8, web9}
	if diff := cmp.Diff(want, f.r.List(), cmpOpts); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	wantChanges := []Change{
		{Kind: Removed, Old: be(3, "web3", "10.0.1.13", 100, drained)},
		{Kind: Removed, Old: be(6, "web7", "10.0.1.17", 7, fromRuntime(true))},
		{Kind: Updated, Old: be(1, "web1", "10.0.1.11", 50, check("tcp://10.0.1.11:80"), health(HealthUp, "ok")), New: web1},
		{Kind: Updated, Old: be(4, "web8", "10.0.1.18", 100, fromRuntime(true), drained), New: web8},
		{Kind: Added, New: web4},
	}
	if diff := cmp.Diff(wantChanges, f.w.take(), cmpOpts); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(file("", `"web1":{"weight":50},"web8":{"drained":true}`), compactState(t, f.path)); diff != "" {
		t.Errorf("state file (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(dataPath(want), f.dp.installed(), cmpOpts); diff != "" {
		t.Errorf("data path (-want +got):\n%s", diff)
	}

	// Reloading the same configuration changes nothing and writes nothing.
	fi, _ := os.Stat(f.path)
	calls := len(f.dp.log())
	reloadCfg := []config.Backend{
		{Service: config.DefaultService, Name: "web1", Address: addr("10.0.1.21"), Weight: 150, Check: "tcp://10.0.1.21:80"},
		baseConfig()[1],
		{Service: config.DefaultService, Name: "web8", Address: addr("10.0.1.28"), Weight: 100},
		{Service: config.DefaultService, Name: "web4", Address: addr("10.0.1.17"), Weight: 40},
	}
	if w, err := f.r.Reload(services, reloadCfg); err != nil || len(w) > 0 {
		t.Errorf("second Reload: %q, %v", w, err)
	}
	if fi2, _ := os.Stat(f.path); !os.SameFile(fi, fi2) || len(f.dp.log()) != calls || len(f.w.take()) > 0 {
		t.Errorf("an identical reload rewrote the file, applied or announced something")
	}

	// A restart with that configuration gives the same set, but for health
	// and IDs.
	f.open(t, reloadCfg)
	wantRestart := []Backend{
		be(1, "web1", "10.0.1.21", 50, check("tcp://10.0.1.21:80")),
		be(2, "web2", "10.0.1.12", 200),
		be(3, "web4", "10.0.1.17", 40),
		be(4, "web8", "10.0.1.28", 100, drained),
	}
	if diff := cmp.Diff(wantRestart, f.r.List(), cmpOpts); diff != "" {
		t.Errorf("after restart: List (-want +got):\n%s", diff)
	}
}

func TestIDs(t *testing.T) {
	f := newFixture(t, baseConfig())
	b, err := f.r.Add("web8", "10.0.1.18", AddOptions{Runtime: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.r.Remove("web8"); err != nil {
		t.Fatal(err)
	}
	c, err := f.r.Add("web9", "10.0.1.18", AddOptions{Runtime: true})
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.r.Add("web8", "10.0.1.28", AddOptions{Runtime: true})
	if err != nil {
		t.Fatal(err)
	}
	// A name keeps its ID; an ID never goes to another name.
	if b.ID != 3 || c.ID != 4 || d.ID != 3 {
		t.Errorf("IDs: web8 %d, web9 %d, web8 again %d; want 3, 4, 3", b.ID, c.ID, d.ID)
	}
	if _, err := f.r.Reload(services, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.r.Reload(services, baseConfig()); err != nil {
		t.Fatal(err)
	}
	var ids []uint32
	for _, b := range f.r.List() {
		ids = append(ids, b.ID)
	}
	if diff := cmp.Diff([]uint32{1, 2, 3, 4}, ids); diff != "" {
		t.Errorf("IDs after a reload without and with web1 and web2 (-want +got):\n%s", diff)
	}
	if strings.Contains(readState(t, f.path), "web") {
		t.Errorf("run-time-only backends were written")
	}
}
