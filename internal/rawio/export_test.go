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
