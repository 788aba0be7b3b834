package healthd

import (
	"fmt"
	"strings"

	"github.com/caplance/caplance/internal/checkspec"
)

// Thresholds are the rise/fall parameters of one check.
type Thresholds struct {
	// Rise is how many consecutive successes make a backend that is not up
	// up; Fall how many consecutive failures make one that is not down
	// down. Both are at least 1 (0 is taken as 1).
	Rise, Fall int
	// Initial is the status before the first probe. checkspec.StateUnknown waits
	// for Rise successes or Fall failures, whichever comes first; up or
	// down is announced at once (a Transition from NewMachine).
	Initial checkspec.State
}

// Machine is the rise/fall state machine of one check: it turns a stream of
// probe results into transitions. It is a value: pure, no clock, no I/O.
type Machine struct {
	th        Thresholds
	status    checkspec.State
	successes int // consecutive
	failures  int // consecutive
}

// Transition is a change of a check's status, with the reason a person
// reads in caplancectl list, e.g. "http: status 503 after 3 tries".
type Transition struct {
	From, To checkspec.State
	Reason   string
}

// NewMachine returns a machine in th.Initial; when that is up or down, the
// transition announces it (the backend is reported so before any probe).
func NewMachine(th Thresholds) (Machine, *Transition) {
	th.Rise, th.Fall = max(th.Rise, 1), max(th.Fall, 1)
	m := Machine{th: th, status: th.Initial}
	if th.Initial == checkspec.StateUnknown {
		return m, nil
	}
	return m, &Transition{From: checkspec.StateUnknown, To: th.Initial, Reason: fmt.Sprintf("initial state %s, before the first probe", th.Initial)}
}

// State is the current verdict.
func (m *Machine) State() checkspec.State { return m.status }

// Successes and Failures are the consecutive successes and failures up to
// the last result (one of them is 0).
func (m *Machine) Successes() int { return m.successes }

// Failures: see Successes.
func (m *Machine) Failures() int { return m.failures }

// Thresholds are the machine's parameters.
func (m *Machine) Thresholds() Thresholds { return m.th }

// Observe feeds one probe result: up, and the probe's detail ("http: status
// 503"). It returns the transition it caused, if any.
func (m *Machine) Observe(up bool, detail string) (Transition, bool) {
	if up {
		m.successes++
		m.failures = 0
		if m.status != checkspec.StateUp && m.successes >= m.th.Rise {
			return m.move(checkspec.StateUp, detail, m.successes), true
		}
		return Transition{}, false
	}
	m.failures++
	m.successes = 0
	if m.status != checkspec.StateDown && m.failures >= m.th.Fall {
		return m.move(checkspec.StateDown, detail, m.failures), true
	}
	return Transition{}, false
}

func (m *Machine) move(to checkspec.State, detail string, n int) Transition {
	t := Transition{From: m.status, To: to, Reason: reason(to, detail, n)}
	m.status = to
	return t
}

// reason is "DETAIL after N tries".
func reason(to checkspec.State, detail string, n int) string {
	detail = strings.TrimSpace(detail)
	if detail == "" {
		detail = "probe failed"
		if to == checkspec.StateUp {
			detail = "probe succeeded"
		}
	}
	tries := "tries"
	if n == 1 {
		tries = "try"
	}
	return fmt.Sprintf("%s after %d %s", detail, n, tries)
}
