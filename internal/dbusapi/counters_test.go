package dbusapi_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/dbusapi"
)

// TestAddReadsNoCounters: adding backends reads no counters, which costs a
// pass over every tracked flow (~40 ms at a million): a reload adding a
// thousand backends would pay it a thousand times.
func TestAddReadsNoCounters(t *testing.T) {
	var reads atomic.Int64
	e := newEnv(t, envOptions{info: func(i *dbusapi.Info) {
		i.Counters = func() map[string]dbusapi.Counters { reads.Add(1); return nil }
		i.CounterInterval = time.Hour
	}})
	sigs := subscribe(t, e.conn)
	before := reads.Load()
	for i := range 5 {
		mustCall(t, e.conn, "", "AddBackend", fmt.Sprintf("web%d", 10+i), fmt.Sprintf("10.0.1.%d", 20+i), map[string]dbus.Variant{})
	}
	sigs.take(t, 10) // InterfacesAdded and BackendAdded of each
	if n := reads.Load() - before; n != 0 {
		t.Errorf("adding 5 backends read the counters %d times, want 0", n)
	}
}
