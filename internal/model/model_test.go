package model

import "testing"

// The names are a backend's State in stats.json (caplanced(8)), so they
// must not change.
func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s    State
		want string
	}{
		{Active, "active"},
		{Draining, "draining"},
		{Down, "down"},
		{State(7), "state(7)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tc.s), got, tc.want)
		}
	}
}
