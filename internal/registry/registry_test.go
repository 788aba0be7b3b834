package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
)

func TestOpen(t *testing.T) {
	f := newFixture(t, baseConfig())
	if diff := cmp.Diff(base(), f.r.List(), cmpOpts); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	want := []applyCall{{Set: []model.Backend{
		{ID: 1, Name: "web1", Service: config.DefaultService, Address: addr("10.0.1.11"), Weight: 100, State: model.Active},
		{ID: 2, Name: "web2", Service: config.DefaultService, Address: addr("10.0.1.12"), Weight: 200, State: model.Active},
	}, OK: true}}
	if diff := cmp.Diff(want, f.dp.log(), cmpOpts); diff != "" {
		t.Errorf("apply calls (-want +got):\n%s", diff)
	}
	if got := readState(t, f.path); got != "(missing)" {
		t.Errorf("Open with nothing to keep wrote the state file:\n%s", got)
	}
	if b, ok := f.r.Get("web2"); !ok || b.Name != "web2" {
		t.Errorf("Get(web2) = %+v, %v", b, ok)
	}
	if _, ok := f.r.Get("web9"); ok {
		t.Errorf("Get(web9) found a backend")
	}
}

// TestChanges runs every change method that succeeds and checks the
// backend set, the announced changes, the state file and the data path.
func TestChanges(t *testing.T) {
	web8 := be(3, "web8", "10.0.1.18", 300, fromRuntime(true), check("http://10.0.1.18/health"))
	web8File := `{"name":"web8","service":"default","address":"10.0.1.18","weight":300,"check":"http://10.0.1.18/health"}`
	addWeb8 := func(r *Registry) error {
		_, err := r.Add("web8", "10.0.1.18", AddOptions{Weight: ptr[uint32](300), Check: "http://10.0.1.18/health"})
		return err
	}
	tests := []struct {
		name  string
		setup []func(*Registry) error
		op    func(*Registry) error
		want  []Backend
		// changes are the changes of op alone.
		changes []Change
		file    string
		// applied says whether op called apply.
		applied bool
	}{{
		name:    "add persistent",
		op:      addWeb8,
		want:    append(base(), web8),
		changes: []Change{{Kind: Added, New: web8}},
		file:    file(web8File, ""),
		applied: true,
	}, {
		name: "add runtime with defaults",
		op: func(r *Registry) error {
			_, err := r.Add("web9", "10.0.1.19", AddOptions{Runtime: true})
			return err
		},
		want:    append(base(), be(3, "web9", "10.0.1.19", 100, fromRuntime(false))),
		changes: []Change{{Kind: Added, New: be(3, "web9", "10.0.1.19", 100, fromRuntime(false))}},
		file:    "(missing)",
		applied: true,
	}, {
		name: "add weight 0, IPv6 address",
		op: func(r *Registry) error {
			_, err := r.Add("a.b_c-d", "2001:db8:1::20", AddOptions{Weight: ptr[uint32](0)})
			return err
		},
		want:    append([]Backend{be(3, "a.b_c-d", "2001:db8:1::20", 0, fromRuntime(true))}, base()...),
		changes: []Change{{Kind: Added, New: be(3, "a.b_c-d", "2001:db8:1::20", 0, fromRuntime(true))}},
		file:    file(`{"name":"a.b_c-d","service":"default","address":"2001:db8:1::20","weight":0}`, ""),
		applied: true,
	}, {
		name:    "remove a drained persistent run-time backend, with its override",
		setup:   []func(*Registry) error{addWeb8, func(r *Registry) error { return r.Drain("web8") }},
		op:      func(r *Registry) error { return r.Remove("web8") },
		want:    base(),
		changes: []Change{{Kind: Removed, Old: be(3, "web8", "10.0.1.18", 300, fromRuntime(true), check("http://10.0.1.18/health"), drained)}},
		file:    file("", ""),
		applied: true,
	}, {
		name: "remove a run-time-only backend",
		setup: []func(*Registry) error{func(r *Registry) error {
			_, err := r.Add("web9", "10.0.1.19", AddOptions{Runtime: true})
			return err
		}},
		op:      func(r *Registry) error { return r.Remove("web9") },
		want:    base(),
		changes: []Change{{Kind: Removed, Old: be(3, "web9", "10.0.1.19", 100, fromRuntime(false))}},
		file:    "(missing)",
		applied: true,
	}, {
		name:    "set weight of a config backend",
		op:      func(r *Registry) error { return r.SetWeight("web1", 50) },
		want:    []Backend{be(1, "web1", "10.0.1.11", 50, check("tcp://10.0.1.11:80")), base()[1]},
		changes: []Change{{Kind: Updated, Old: base()[0], New: be(1, "web1", "10.0.1.11", 50, check("tcp://10.0.1.11:80"))}},
		file:    file("", `"web1":{"weight":50}`),
		applied: true,
	}, {
		name:    "set weight 0",
		op:      func(r *Registry) error { return r.SetWeight("web2", 0) },
		want:    []Backend{base()[0], be(2, "web2", "10.0.1.12", 0)},
		changes: []Change{{Kind: Updated, Old: base()[1], New: be(2, "web2", "10.0.1.12", 0)}},
		file:    file("", `"web2":{"weight":0}`),
		applied: true,
	}, {
		name:    "set weight back to the configured one drops the override",
		setup:   []func(*Registry) error{func(r *Registry) error { return r.SetWeight("web1", 50) }},
		op:      func(r *Registry) error { return r.SetWeight("web1", 100) },
		want:    base(),
		changes: []Change{{Kind: Updated, Old: be(1, "web1", "10.0.1.11", 50, check("tcp://10.0.1.11:80")), New: base()[0]}},
		file:    file("", ""),
		applied: true,
	}, {
		name: "set weight to the weight it has: nothing happens",
		op:   func(r *Registry) error { return r.SetWeight("web2", 200) },
		want: base(),
		file: "(missing)",
	}, {
		name: "set weight of a run-time-only backend is not written",
		setup: []func(*Registry) error{func(r *Registry) error {
			_, err := r.Add("web9", "10.0.1.19", AddOptions{Runtime: true})
			return err
		}},
		op:      func(r *Registry) error { return r.SetWeight("web9", 7) },
		want:    append(base(), be(3, "web9", "10.0.1.19", 7, fromRuntime(false))),
		changes: []Change{{Kind: Updated, Old: be(3, "web9", "10.0.1.19", 100, fromRuntime(false)), New: be(3, "web9", "10.0.1.19", 7, fromRuntime(false))}},
		file:    "(missing)",
		applied: true,
	}, {
		name:    "drain",
		op:      func(r *Registry) error { return r.Drain("web2") },
		want:    []Backend{base()[0], be(2, "web2", "10.0.1.12", 200, drained)},
		changes: []Change{{Kind: Updated, Old: base()[1], New: be(2, "web2", "10.0.1.12", 200, drained)}},
		file:    file("", `"web2":{"drained":true}`),
		applied: true,
	}, {
		name:    "undrain keeps a weight override",
		setup:   []func(*Registry) error{func(r *Registry) error { return r.SetWeight("web2", 5) }, func(r *Registry) error { return r.Drain("web2") }},
		op:      func(r *Registry) error { return r.Undrain("web2") },
		want:    []Backend{base()[0], be(2, "web2", "10.0.1.12", 5)},
		changes: []Change{{Kind: Updated, Old: be(2, "web2", "10.0.1.12", 5, drained), New: be(2, "web2", "10.0.1.12", 5)}},
		file:    file("", `"web2":{"weight":5}`),
		applied: true,
	}, {
		name:    "undrain",
		setup:   []func(*Registry) error{func(r *Registry) error { return r.Drain("web2") }},
		op:      func(r *Registry) error { return r.Undrain("web2") },
		want:    base(),
		changes: []Change{{Kind: Updated, Old: be(2, "web2", "10.0.1.12", 200, drained), New: base()[1]}},
		file:    file("", ""),
		applied: true,
	}, {
		name:    "report down",
		op:      func(r *Registry) error { _, err := r.ReportHealth("web1", false, "connection refused"); return err },
		want:    []Backend{be(1, "web1", "10.0.1.11", 100, check("tcp://10.0.1.11:80"), health(HealthDown, "connection refused")), base()[1]},
		changes: []Change{{Kind: Updated, Old: base()[0], New: be(1, "web1", "10.0.1.11", 100, check("tcp://10.0.1.11:80"), health(HealthDown, "connection refused"))}},
		file:    "(missing)",
		applied: true,
	}, {
		// Unknown counts as up: the data path does not change.
		name:    "report up from unknown",
		op:      func(r *Registry) error { _, err := r.ReportHealth("web2", true, ""); return err },
		want:    []Backend{base()[0], be(2, "web2", "10.0.1.12", 200, health(HealthUp, ""))},
		changes: []Change{{Kind: Updated, Old: base()[1], New: be(2, "web2", "10.0.1.12", 200, health(HealthUp, ""))}},
		file:    "(missing)",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, baseConfig())
			for i, s := range tt.setup {
				if err := s(f.r); err != nil {
					t.Fatalf("setup %d: %v", i, err)
				}
			}
			f.w.take()
			calls := len(f.dp.log())
			if err := tt.op(f.r); err != nil {
				t.Fatalf("got %v", err)
			}
			if diff := cmp.Diff(tt.want, f.r.List(), cmpOpts); diff != "" {
				t.Errorf("List (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.changes, f.w.take(), cmpOpts); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.file, compactState(t, f.path)); diff != "" {
				t.Errorf("state file (-want +got):\n%s", diff)
			}
			if got := len(f.dp.log()) - calls; got != map[bool]int{false: 0, true: 1}[tt.applied] {
				t.Errorf("op called apply %d times, want applied=%v", got, tt.applied)
			}
			if diff := cmp.Diff(dataPath(tt.want), f.dp.installed(), cmpOpts); diff != "" {
				t.Errorf("data path (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAddReturnsBackend(t *testing.T) {
	f := newFixture(t, baseConfig())
	got, err := f.r.Add("web8", "10.0.1.18", AddOptions{Check: "tcp://10.0.1.18:80"})
	if err != nil {
		t.Fatal(err)
	}
	want := be(3, "web8", "10.0.1.18", config.DefaultWeight, fromRuntime(true), check("tcp://10.0.1.18:80"))
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Add (-want +got):\n%s", diff)
	}
}

// TestRefused checks that every bad input is refused with the right kind
// and a message naming the problem, and changes nothing: not the backend
// set, not the state file, not the data path, and announces nothing.
func TestRefused(t *testing.T) {
	add := func(name, address string, opts AddOptions) func(*Registry) error {
		return func(r *Registry) error { _, err := r.Add(name, address, opts); return err }
	}
	health := func(name string) func(*Registry) error {
		return func(r *Registry) error { _, err := r.ReportHealth(name, false, "x"); return err }
	}
	reload := func(cfg []config.Backend) func(*Registry) error {
		return func(r *Registry) error { _, err := r.Reload(services, cfg); return err }
	}
	long := strings.Repeat("a", 100_000)
	echo := `"` + strings.Repeat("a", 64) + `"…` // what a message repeats of long
	tests := []struct {
		name  string
		op    func(*Registry) error
		kind  error
		frags []string
	}{
		{"malformed address", add("web9", "10.0.0.300", AddOptions{}), ErrInvalidArgument, []string{`address "10.0.0.300": not an IP address`}},
		{"link-local address", add("web9", "fe80::1", AddOptions{}), ErrInvalidArgument, []string{`address "fe80::1": link-local address`}},
		{"empty address", add("web9", "", AddOptions{}), ErrInvalidArgument, []string{`adding backend "web9": address: missing`}},
		{"loopback address", add("web9", "127.0.0.2", AddOptions{}), ErrInvalidArgument, []string{`address "127.0.0.2": loopback`}},
		{"multicast address", add("web9", "224.0.0.1", AddOptions{}), ErrInvalidArgument, []string{`address "224.0.0.1": multicast`}},
		{"VIP as address", add("web9", "10.0.0.100", AddOptions{}), ErrInvalidArgument, []string{"address 10.0.0.100: is a VIP"}},
		{"name too long", add(long, "10.0.1.19", AddOptions{}), ErrInvalidArgument, []string{"adding backend " + echo + ": name: must be 1-64 characters"}},
		{"address too long", add("web9", long, AddOptions{}), ErrInvalidArgument, []string{"address " + echo + ": not an IP address"}},
		{"unknown long name", health(long), ErrNotFound, []string{"backend " + echo + ": no such backend"}},
		{"name with slash", add("web/9", "10.0.1.19", AddOptions{}), ErrInvalidArgument, []string{`adding backend "web/9": name: must be 1-64 characters of A-Z a-z 0-9 . _ -`}},
		{"empty name", add("", "10.0.1.19", AddOptions{}), ErrInvalidArgument, []string{`adding backend "": name: missing`}},
		{"add weight too big", add("web9", "10.0.1.19", AddOptions{Weight: ptr[uint32](10001)}), ErrInvalidArgument, []string{"weight 10001: must be between 0 and 10000"}},
		{"invalid check", add("web9", "10.0.1.19", AddOptions{Check: "ping 10.0.1.19"}), ErrInvalidArgument, []string{`check "ping 10.0.1.19": not a check spec`}},
		{"duplicate name of a config backend", add("web1", "10.0.1.19", AddOptions{}), ErrAlreadyExists, []string{`adding backend "web1": name: already used by another backend`}},
		{"duplicate address", add("web9", "10.0.1.11", AddOptions{}), ErrAlreadyExists, []string{`adding backend "web9": address 10.0.1.11: already used by backend "web1"`}},
		{"duplicate address of a run-time-only backend", add("web9", "10.0.1.17", AddOptions{Runtime: true}), ErrAlreadyExists, []string{`adding backend "web9": address 10.0.1.17: already used by backend "web7"`}},
		{"remove unknown", func(r *Registry) error { return r.Remove("web9") }, ErrNotFound, []string{`backend "web9": no such backend`}},
		{"remove config backend", func(r *Registry) error { return r.Remove("web1") }, ErrInvalidArgument, []string{`backend "web1" is defined in the configuration file: remove it there and reload`}},
		{"set weight unknown", func(r *Registry) error { return r.SetWeight("web9", 5) }, ErrNotFound, []string{`backend "web9": no such backend`}},
		{"set weight too big", func(r *Registry) error { return r.SetWeight("web1", 10001) }, ErrInvalidArgument, []string{`backend "web1": weight 10001: must be between 0 and 10000`}},
		{"set weight negative", func(r *Registry) error { return r.SetWeight("web1", -1) }, ErrInvalidArgument, []string{"weight -1: must be between 0 and 10000"}},
		{"set weight beyond uint32", func(r *Registry) error { return r.SetWeight("web1", 1<<32+5) }, ErrInvalidArgument, []string{"weight 4294967301: must be between"}},
		{"drain unknown", func(r *Registry) error { return r.Drain("web9") }, ErrNotFound, []string{`backend "web9": no such backend`}},
		{"drain twice", func(r *Registry) error { return r.Drain("web2") }, ErrUnchanged, []string{`backend "web2": already drained`}},
		{"undrain active", func(r *Registry) error { return r.Undrain("web1") }, ErrUnchanged, []string{`backend "web1": already undrained (not drained)`}},
		{"add a run-time backend again as it is", add("web8", "10.0.1.18", AddOptions{}), ErrUnchanged, []string{`backend "web8": already added, with that service, address, weight and check`}},
		{"add a run-time-only backend again as it is", add("web7", "10.0.1.17", AddOptions{Runtime: true, Weight: ptr[uint32](100)}), ErrUnchanged, []string{`backend "web7": already added`}},
		{"add again with another address", add("web8", "10.0.1.19", AddOptions{}), ErrAlreadyExists, []string{`adding backend "web8": it exists already with address 10.0.1.18, not 10.0.1.19 (remove it first)`}},
		{"add again with another weight", add("web8", "10.0.1.18", AddOptions{Weight: ptr[uint32](5)}), ErrAlreadyExists, []string{`adding backend "web8": it exists already with weight 100, not 5 (remove it first)`}},
		{"add again with another check", add("web8", "10.0.1.18", AddOptions{Check: "tcp://10.0.1.18:80"}), ErrAlreadyExists, []string{`with check "", not "tcp://10.0.1.18:80"`}},
		{"add again run-time only", add("web8", "10.0.1.18", AddOptions{Runtime: true}), ErrAlreadyExists, []string{`with persistence persistent, not run-time only`}},
		{"add a config backend as it is", add("web1", "10.0.1.11", AddOptions{}), ErrAlreadyExists, []string{`adding backend "web1": name: already used`}},
		{"undrain unknown", func(r *Registry) error { return r.Undrain("web9") }, ErrNotFound, []string{`backend "web9": no such backend`}},
		{"report health unknown", health("web9"), ErrNotFound, []string{`backend "web9": no such backend`}},
		{"reload: duplicate names", reload(append(baseConfig(), config.Backend{Service: config.DefaultService, Name: "web1", Address: addr("10.0.1.31"), Weight: 1})), ErrInvalidArgument, []string{`backend "web1": name: already used by another backend`}},
		{"reload: duplicate addresses", reload(append(baseConfig(), config.Backend{Service: config.DefaultService, Name: "web3", Address: addr("10.0.1.12"), Weight: 1})), ErrInvalidArgument, []string{`backend "web3": address 10.0.1.12: already used by backend "web2"`}},
		{"reload: VIP, weight, check and name, all named", reload([]config.Backend{
			{Service: config.DefaultService, Name: "web3", Address: theVIP, Weight: 10001, Check: "nope"},
			{Service: config.DefaultService, Name: "a/b", Address: addr("10.0.1.40"), Weight: 1},
		}), ErrInvalidArgument, []string{"address 10.0.0.100: is a VIP", "weight 10001", `check "nope"`, `backend "a/b": name`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, baseConfig())
			// Something in every part: a persistent and a run-time-only
			// backend, a drained one, an override, a health report.
			if _, err := f.r.Add("web8", "10.0.1.18", AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.r.Add("web7", "10.0.1.17", AddOptions{Runtime: true}); err != nil {
				t.Fatal(err)
			}
			if err := f.r.Drain("web2"); err != nil {
				t.Fatal(err)
			}
			if err := f.r.SetWeight("web8", 7); err != nil {
				t.Fatal(err)
			}
			if _, err := f.r.ReportHealth("web1", true, "ok"); err != nil {
				t.Fatal(err)
			}
			f.w.take()
			before := f.snapshot(t)
			calls := len(f.dp.log())
			err := tt.op(f.r)
			checkErr(t, err, tt.kind, tt.frags...)
			if n := len(err.Error()); n > 512 {
				t.Errorf("a %d-byte error message: it repeats too much of what it refuses", n)
			}
			if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
				t.Errorf("a refused change changed something (-want +got):\n%s", diff)
			}
			if got := len(f.dp.log()); got != calls {
				t.Errorf("a refused change called apply")
			}
		})
	}
}

// TestApplyFailure makes the data path refuse every kind of change: the
// error is ErrFailed wrapping the cause, and nothing changed.
func TestApplyFailure(t *testing.T) {
	cause := errors.New("no route to 10.0.1.18")
	tests := []struct {
		name string
		op   func(*Registry) error
	}{
		{"add", func(r *Registry) error { _, err := r.Add("web9", "10.0.1.19", AddOptions{}); return err }},
		{"remove", func(r *Registry) error { return r.Remove("web8") }},
		{"set weight", func(r *Registry) error { return r.SetWeight("web1", 1) }},
		{"drain", func(r *Registry) error { return r.Drain("web1") }},
		{"undrain", func(r *Registry) error { return r.Undrain("web2") }},
		{"report health", func(r *Registry) error { _, err := r.ReportHealth("web1", false, "timeout"); return err }},
		{"reload", func(r *Registry) error { _, err := r.Reload(services, baseConfig()[:1]); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, baseConfig())
			if _, err := f.r.Add("web8", "10.0.1.18", AddOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := f.r.Drain("web2"); err != nil {
				t.Fatal(err)
			}
			f.w.take()
			before := f.snapshot(t)
			f.dp.setFail(cause)
			err := tt.op(f.r)
			checkErr(t, err, ErrFailed, "the data path refused the change", cause.Error(), "nothing changed")
			if !errors.Is(err, cause) {
				t.Errorf("error %q does not wrap the cause", err)
			}
			if diff := cmp.Diff(before, f.snapshot(t), cmpOpts); diff != "" {
				t.Errorf("a failed change changed something (-want +got):\n%s", diff)
			}
			// The next change works and is applied.
			f.dp.setFail(nil)
			if err := tt.op(f.r); err != nil {
				t.Fatalf("after the data path recovered: %v", err)
			}
			if diff := cmp.Diff(dataPath(f.r.List()), f.dp.installed(), cmpOpts); diff != "" {
				t.Errorf("data path (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReportHealthChanged(t *testing.T) {
	f := newFixture(t, baseConfig())
	web1 := func(mods ...func(*Backend)) Backend {
		return be(1, "web1", "10.0.1.11", 100, append([]func(*Backend){check("tcp://10.0.1.11:80")}, mods...)...)
	}
	steps := []struct {
		healthy bool
		detail  string
		changed bool
		changes []Change
		state   model.State
	}{
		{true, "", true, []Change{{Kind: Updated, Old: web1(), New: web1(health(HealthUp, ""))}}, model.Active},
		{true, "", false, nil, model.Active},
		{false, "refused", true, []Change{{Kind: Updated, Old: web1(health(HealthUp, "")), New: web1(health(HealthDown, "refused"))}}, model.Down},
		{false, "refused", false, nil, model.Down},
		{false, "timeout", true, []Change{{Kind: Updated, Old: web1(health(HealthDown, "refused")), New: web1(health(HealthDown, "timeout"))}}, model.Down},
		{true, "", true, []Change{{Kind: Updated, Old: web1(health(HealthDown, "timeout")), New: web1(health(HealthUp, ""))}}, model.Active},
	}
	for i, s := range steps {
		calls := len(f.dp.log())
		changed, err := f.r.ReportHealth("web1", s.healthy, s.detail)
		if err != nil || changed != s.changed {
			t.Errorf("step %d: ReportHealth = %v, %v; want %v, nil", i, changed, err, s.changed)
		}
		if diff := cmp.Diff(s.changes, f.w.take(), cmpOpts); diff != "" {
			t.Errorf("step %d: changes (-want +got):\n%s", i, diff)
		}
		if !s.changed && len(f.dp.log()) != calls {
			t.Errorf("step %d: a report without a transition called apply", i)
		}
		if got := f.dp.installed()[0].State; got != s.state {
			t.Errorf("step %d: data path state %v, want %v", i, got, s.state)
		}
	}
	if got := readState(t, f.path); got != "(missing)" {
		t.Errorf("health was written to the state file:\n%s", got)
	}
}

// TestDataPathMapping: what the balancer gets for each admin state, health
// and weight.
func TestDataPathMapping(t *testing.T) {
	tests := []struct {
		drain   bool
		health  string // "", "up", "down"
		weight  uint32
		want    model.State
		wantWgt uint32
	}{
		{false, "", 100, model.Active, 100},
		{false, "up", 100, model.Active, 100},
		{false, "down", 100, model.Down, 100},
		{true, "", 100, model.Draining, 100},
		{true, "up", 100, model.Draining, 100},
		{true, "down", 100, model.Down, 100},
		{false, "", 0, model.Active, 0},
		{true, "", 0, model.Draining, 0},
		{false, "down", 0, model.Down, 0},
		{false, "up", 10000, model.Active, 10000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("drain=%v,health=%q,weight=%d", tt.drain, tt.health, tt.weight), func(t *testing.T) {
			f := newFixture(t, nil)
			b, err := f.r.Add("web9", "10.0.1.19", AddOptions{Weight: ptr(tt.weight), Runtime: true})
			if err != nil {
				t.Fatal(err)
			}
			if tt.drain {
				if err := f.r.Drain("web9"); err != nil {
					t.Fatal(err)
				}
			}
			if tt.health != "" {
				if _, err := f.r.ReportHealth("web9", tt.health == "up", ""); err != nil {
					t.Fatal(err)
				}
			}
			want := []model.Backend{{ID: b.ID, Name: "web9", Service: config.DefaultService, Address: addr("10.0.1.19"), Weight: tt.wantWgt, State: tt.want}}
			if diff := cmp.Diff(want, f.dp.installed(), cmpOpts); diff != "" {
				t.Errorf("data path (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWatch checks order and content of the changes and that watchers may
// read the registry.
func TestWatch(t *testing.T) {
	f := newFixture(t, baseConfig())
	var seen []string
	f.r.Watch(func(c Change) {
		// A watcher may read, and sees the change committed.
		b, ok := f.r.Get(changed(c))
		seen = append(seen, fmt.Sprintf("%v %s present=%v weight=%d", c.Kind, changed(c), ok, b.Weight))
	})
	web8 := be(3, "web8", "10.0.1.18", 100, fromRuntime(true))
	steps := []struct {
		op   func() error
		want []Change
	}{
		{func() error { _, err := f.r.Add("web8", "10.0.1.18", AddOptions{}); return err },
			[]Change{{Kind: Added, New: web8}}},
		{func() error { return f.r.SetWeight("web8", 3) },
			[]Change{{Kind: Updated, Old: web8, New: be(3, "web8", "10.0.1.18", 3, fromRuntime(true))}}},
		{func() error { return f.r.Drain("web8") },
			[]Change{{Kind: Updated, Old: be(3, "web8", "10.0.1.18", 3, fromRuntime(true)), New: be(3, "web8", "10.0.1.18", 3, fromRuntime(true), drained)}}},
		{func() error { return f.r.Undrain("web8") },
			[]Change{{Kind: Updated, Old: be(3, "web8", "10.0.1.18", 3, fromRuntime(true), drained), New: be(3, "web8", "10.0.1.18", 3, fromRuntime(true))}}},
		{func() error { _, err := f.r.ReportHealth("web8", false, "boom"); return err },
			[]Change{{Kind: Updated, Old: be(3, "web8", "10.0.1.18", 3, fromRuntime(true)), New: be(3, "web8", "10.0.1.18", 3, fromRuntime(true), health(HealthDown, "boom"))}}},
		{func() error { return f.r.Remove("web8") },
			[]Change{{Kind: Removed, Old: be(3, "web8", "10.0.1.18", 3, fromRuntime(true), health(HealthDown, "boom"))}}},
		// A reload: removals, then updates, then additions.
		{func() error {
			_, err := f.r.Reload(services, []config.Backend{
				{Service: config.DefaultService, Name: "web0", Address: addr("10.0.1.10"), Weight: 1},
				{Service: config.DefaultService, Name: "web2", Address: addr("10.0.1.22"), Weight: 200, Check: "tcp://10.0.1.22:80"},
			})
			return err
		}, []Change{
			{Kind: Removed, Old: base()[0]},
			{Kind: Updated, Old: base()[1], New: be(2, "web2", "10.0.1.22", 200, check("tcp://10.0.1.22:80"))},
			{Kind: Added, New: be(4, "web0", "10.0.1.10", 1)},
		}},
	}
	for i, s := range steps {
		if err := s.op(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if diff := cmp.Diff(s.want, f.w.take(), cmpOpts); diff != "" {
			t.Errorf("step %d: changes (-want +got):\n%s", i, diff)
		}
	}
	want := []string{
		"added web8 present=true weight=100",
		"updated web8 present=true weight=3",
		"updated web8 present=true weight=3",
		"updated web8 present=true weight=3",
		"updated web8 present=true weight=3",
		"removed web8 present=false weight=0",
		"removed web1 present=false weight=0",
		"updated web2 present=true weight=200",
		"added web0 present=true weight=1",
	}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("what the watcher read (-want +got):\n%s", diff)
	}
}
