package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

var (
	theVIP = netip.MustParseAddr("10.0.0.100")
	// services is the configuration file's of most tests: today's form,
	// one service named default.
	services = []model.Service{{Name: config.DefaultService, VIPs: []model.VIP{{Addr: theVIP}},
		Protocols: model.TCP | model.UDP, TableSize: 65537}}
)

// baseConfig is the configuration file of most tests: web1 with a check,
// web2 without.
func baseConfig() []config.Backend {
	return []config.Backend{
		{Service: config.DefaultService, Name: "web1", Address: netip.MustParseAddr("10.0.1.11"), Weight: 100, Check: "tcp://10.0.1.11:80"},
		{Service: config.DefaultService, Name: "web2", Address: netip.MustParseAddr("10.0.1.12"), Weight: 200},
	}
}

var cmpOpts = cmp.Options{cmpopts.EquateComparable(netip.Addr{}), cmpopts.EquateEmpty()}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ptr[T any](v T) *T { return &v }

// applyCall is one call of the apply callback: its backends (the tests of
// services look at recorder.services).
type applyCall struct {
	Set []model.Backend
	OK  bool
}

// recorder is the data path: it records every apply call and fails those
// that fail says to (all of them when it is set by setFail).
type recorder struct {
	mu    sync.Mutex
	calls []applyCall
	// services are the services of each call.
	services [][]model.Service
	// fail is asked with the call's number (from 0) in calls.
	fail func(n int) error
}

func (d *recorder) apply(set model.Set) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	if d.fail != nil {
		err = d.fail(len(d.calls))
	}
	d.calls = append(d.calls, applyCall{Set: slices.Clone(set.Backends), OK: err == nil})
	d.services = append(d.services, slices.Clone(set.Services))
	return err
}

// setFail makes every call fail with err; nil makes them all succeed.
func (d *recorder) setFail(err error) {
	d.setFailFunc(func(int) error { return err })
}

func (d *recorder) setFailFunc(fail func(n int) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = fail
}

func (d *recorder) log() []applyCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// installed is the set the data path has: the last successful call's.
func (d *recorder) installed() []model.Backend {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.calls) - 1; i >= 0; i-- {
		if d.calls[i].OK {
			return d.calls[i].Set
		}
	}
	return nil
}

// installedServices are the services the data path has: the last
// successful call's.
func (d *recorder) installedServices() []model.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.calls) - 1; i >= 0; i-- {
		if d.calls[i].OK {
			return d.services[i]
		}
	}
	return nil
}

// watcher records the changes a Watch function gets.
type watcher struct {
	mu      sync.Mutex
	changes []Change
}

func (w *watcher) fn(c Change) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.changes = append(w.changes, c)
}

func (w *watcher) take() []Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.changes
	w.changes = nil
	return c
}

// changed is the name of the backend c is about.
func changed(c Change) string {
	if c.Kind == Removed {
		return c.Old.Name
	}
	return c.New.Name
}

// fixture is a registry with a state file in a temporary directory, its
// data path recorder and a watcher.
type fixture struct {
	dir, path string
	dp        *recorder
	w         *watcher
	r         *Registry
}

func newFixture(t *testing.T, cfg []config.Backend) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, path: filepath.Join(dir, "backends.json")}
	f.open(t, cfg)
	return f
}

// open (re)opens the registry on the fixture's state file, with a new
// recorder and watcher.
func (f *fixture) open(t *testing.T, cfg []config.Backend) []string {
	t.Helper()
	f.dp, f.w = &recorder{}, &watcher{}
	r, warnings, err := Open(f.path, services, cfg, f.dp.apply)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	r.Watch(f.w.fn)
	f.r = r
	return warnings
}

// readState returns the state file's content, or "(missing)".
func readState(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "(missing)"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot is everything a refused or failed change must leave alone.
type snapshot struct {
	List      []Backend
	StateFile string
	Installed []model.Backend
	Changes   []Change
}

func (f *fixture) snapshot(t *testing.T) snapshot {
	t.Helper()
	return snapshot{List: f.r.List(), StateFile: readState(t, f.path), Installed: f.dp.installed(), Changes: f.w.take()}
}

// sentinels are the error kinds; an error must wrap exactly one.
var sentinels = []error{ErrInvalidArgument, ErrNotFound, ErrAlreadyExists, ErrFailed}

// checkErr fails unless err wraps want and no other kind, and its message
// contains every fragment.
func checkErr(t *testing.T, err, want error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	for _, s := range sentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(%q, %v) = %v, want %v", err, s, got, s == want)
		}
	}
	for _, frag := range fragments {
		if !strings.Contains(err.Error(), frag) {
			t.Errorf("error %q does not contain %q", err, frag)
		}
	}
}

// compactState returns the state file as compact JSON, or "(missing)".
func compactState(t *testing.T, path string) string {
	t.Helper()
	s := readState(t, path)
	if s == "(missing)" {
		return s
	}
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatalf("state file %s: %v\n%s", path, err, s)
	}
	return b.String()
}

// file builds the compact state file of backends (a JSON list's inside)
// and overrides (a JSON object's inside).
func file(backends, overrides string) string {
	return `{"version":2,"backends":[` + backends + `],"overrides":{` + overrides + `}}`
}

// be builds an expected backend: by default from the configuration file,
// active, health unknown.
func be(id uint32, name, address string, weight uint32, mods ...func(*Backend)) Backend {
	b := Backend{ID: id, Name: name, Service: config.DefaultService, Address: netip.MustParseAddr(address), Weight: weight,
		Admin: AdminActive, Health: HealthUnknown, Source: SourceConfig, Persistent: true}
	for _, m := range mods {
		m(&b)
	}
	return b
}

func drained(b *Backend) { b.Admin = AdminDrained }

func fromRuntime(persistent bool) func(*Backend) {
	return func(b *Backend) { b.Source, b.Persistent = SourceRuntime, persistent }
}

// check gives the backend a check of its own.
func check(spec string) func(*Backend) { return func(b *Backend) { b.Check = spec } }

func health(h Health, detail string) func(*Backend) {
	return func(b *Backend) { b.Health, b.HealthDetail = h, detail }
}

// base are the backends of baseConfig as Open gives them.
func base() []Backend {
	return []Backend{
		be(1, "web1", "10.0.1.11", 100, check("tcp://10.0.1.11:80")),
		be(2, "web2", "10.0.1.12", 200),
	}
}
