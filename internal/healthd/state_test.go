package healthd

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/checkspec"
)

// step is one probe result fed to a machine and what must follow.
type step struct {
	up     bool
	detail string
	// want is the transition, nil for none; state, successes and
	// failures are the machine's after the step.
	want                *Transition
	state               checkspec.State
	successes, failures int
}

func ok(detail string, state checkspec.State, s int) step {
	return step{up: true, detail: detail, state: state, successes: s}
}

func fail(detail string, state checkspec.State, f int) step {
	return step{up: false, detail: detail, state: state, failures: f}
}

func (s step) to(from, to checkspec.State, reason string) step {
	s.want = &Transition{From: from, To: to, Reason: reason}
	return s
}

func TestMachine(t *testing.T) {
	const (
		unknown = checkspec.StateUnknown
		up      = checkspec.StateUp
		down    = checkspec.StateDown
	)
	tests := []struct {
		name        string
		th          Thresholds
		wantInitial *Transition
		steps       []step
	}{
		{
			name: "unknown rises after rise successes",
			th:   Thresholds{Rise: 2, Fall: 3},
			steps: []step{
				ok("tcp: connected", unknown, 1),
				ok("tcp: connected", up, 2).to(unknown, up, "tcp: connected after 2 tries"),
				ok("tcp: connected", up, 3),
			},
		},
		{
			name: "unknown falls after fall failures; the last detail is the reason",
			th:   Thresholds{Rise: 2, Fall: 3},
			steps: []step{
				fail("http: timeout after 1s", unknown, 1),
				fail("http: status 503", unknown, 2),
				fail("http: status 503", down, 3).to(unknown, down, "http: status 503 after 3 tries"),
				fail("http: status 503", down, 4),
			},
		},
		{
			name: "a success resets the failures",
			th:   Thresholds{Rise: 2, Fall: 3},
			steps: []step{
				ok("ok", unknown, 1),
				ok("ok", up, 2).to(unknown, up, "ok after 2 tries"),
				fail("refused", up, 1),
				fail("refused", up, 2),
				ok("ok", up, 1),
				fail("refused", up, 1),
				fail("refused", up, 2),
				fail("refused", down, 3).to(up, down, "refused after 3 tries"),
			},
		},
		{
			name: "a failure resets the successes",
			th:   Thresholds{Rise: 3, Fall: 1},
			steps: []step{
				fail("refused", down, 1).to(unknown, down, "refused after 1 try"),
				ok("ok", down, 1),
				ok("ok", down, 2),
				fail("refused", down, 1),
				ok("ok", down, 1),
				ok("ok", down, 2),
				ok("ok", up, 3).to(down, up, "ok after 3 tries"),
			},
		},
		{
			name: "rise and fall of 1 flap with every result",
			th:   Thresholds{Rise: 1, Fall: 1},
			steps: []step{
				ok("a", up, 1).to(unknown, up, "a after 1 try"),
				fail("b", down, 1).to(up, down, "b after 1 try"),
				fail("b", down, 2),
				ok("a", up, 1).to(down, up, "a after 1 try"),
			},
		},
		{
			name:        "initial down needs rise successes",
			th:          Thresholds{Rise: 2, Fall: 3, Initial: down},
			wantInitial: &Transition{From: unknown, To: down, Reason: "initial state down, before the first probe"},
			steps: []step{
				fail("refused", down, 1),
				ok("ok", down, 1),
				ok("ok", up, 2).to(down, up, "ok after 2 tries"),
			},
		},
		{
			name:        "initial up needs fall failures",
			th:          Thresholds{Rise: 2, Fall: 2, Initial: up},
			wantInitial: &Transition{From: unknown, To: up, Reason: "initial state up, before the first probe"},
			steps: []step{
				ok("ok", up, 1),
				fail("refused", up, 1),
				fail("refused", down, 2).to(up, down, "refused after 2 tries"),
			},
		},
		{
			name: "zero thresholds count as 1; an empty detail gets a word",
			th:   Thresholds{},
			steps: []step{
				fail("", down, 1).to(unknown, down, "probe failed after 1 try"),
				ok(" ", up, 1).to(down, up, "probe succeeded after 1 try"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, initial := NewMachine(tt.th)
			if diff := cmp.Diff(tt.wantInitial, initial); diff != "" {
				t.Errorf("initial transition (-want +got):\n%s", diff)
			}
			for i, s := range tt.steps {
				tr, moved := m.Observe(s.up, s.detail)
				var got *Transition
				if moved {
					got = &tr
				}
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Errorf("step %d (up=%v %q): transition (-want +got):\n%s", i, s.up, s.detail, diff)
				}
				if m.State() != s.state || m.Successes() != s.successes || m.Failures() != s.failures {
					t.Errorf("step %d: status %v successes %d failures %d, want %v %d %d",
						i, m.State(), m.Successes(), m.Failures(), s.state, s.successes, s.failures)
				}
			}
		})
	}
}
