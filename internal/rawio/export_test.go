package rawio

import (
	"testing"
	"time"
)

// SetIdlePoll makes the Loops started during the test block in poll for d
// when idle.
func SetIdlePoll(t testing.TB, d time.Duration) {
	old := idlePoll
	idlePoll = d
	t.Cleanup(func() { idlePoll = old })
}

// SleepWhenEmpty is sleepWhenEmpty, and BusyRounds and BusyBatch its limits.
var SleepWhenEmpty = sleepWhenEmpty

const (
	BusyRounds = busyRounds
	BusyBatch  = busyBatch
)
