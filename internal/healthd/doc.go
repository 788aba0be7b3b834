// Package healthd is caplance-healthd (caplance-healthd(8)): it learns
// caplanced's backends and their check specs over D-Bus, probes them with
// package probe, turns the results into up/down transitions with the
// rise/fall state machine, reports the transitions with caplanced's
// ReportHealth, and shows every check on its own bus name
// org.caplance.Health1.
//
// The parts, each in its own file:
//
//   - state.go: Machine, the rise/fall state machine of one check; pure.
//   - scheduler.go: runs each distinct probe (checkspec.Spec.Key) on its own
//     goroutine every interval, after a start-up jitter, never overlapping
//     itself, with at most max_concurrent_probes probes at once.
//   - report.go: the queue of reports to caplanced, newest per backend,
//     sent in batches and retried with a doubling backoff.
//   - healthd.go: Daemon, the loop that owns the state: it follows
//     caplanced (GetManagedObjects, then InterfacesAdded/Removed and
//     PropertiesChanged; NameOwnerChanged to notice restarts, after which it
//     syncs and sends the whole state again), feeds probe results to the
//     machines, and tells systemd how it is doing.
//   - health1.go: the org.caplance.Health1 objects.
//   - config.go: caplance-healthd.toml(5), read strictly; cmd.go: the
//     command line.
//   - watchdog.go: WATCHDOG=1 while the loop answers Alive, and the
//     watchdog's test hook.
//
// It talks to caplanced only over D-Bus and changes nothing on the host; the
// probes themselves are package probe's. It must not decide health
// anywhere but in Machine, nor call caplanced anywhere but in report.go and
// Daemon's sync.
package healthd
