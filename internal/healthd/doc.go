// Package healthd is caplance-healthd (caplance-healthd(8)): it learns
// caplanced's services and their backends, with each backend's check spec
// (its own, else its service's, as caplanced resolves it), over D-Bus,
// probes them with
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
//   - follower.go: the follower, healthd's mirror of caplanced over D-Bus:
//     its owner (GetNameOwner, then NameOwnerChanged, believed only from
//     the bus), its signals (InterfacesAdded/Removed and PropertiesChanged,
//     believed only from caplanced's current unique name) and the re-sync
//     (GetManagedObjects) when caplanced comes back or a read failed. It
//     emits an upsert or remove for each backend whose Service, Address,
//     Check or Source changed, the tunnel VIPs of each service (its lowest
//     VIP of each family: a tunnel check aims at the one of its backend's
//     family, else at the other) and the encap port when they change, and
//     resynced after a sync;
//     it knows nothing of probes. Backend names are unique across services,
//     so checks and reports are kept by backend name: per (service,
//     backend).
//   - healthd.go: Daemon, the loop that owns the state: it turns the
//     follower's events into checks (and refuses exec checks, execdir.go),
//     feeds probe results to the machines, sends the whole state again after
//     each sync, and tells systemd how it is doing.
//   - health1.go: the org.caplance.Health1 objects.
//   - config.go: caplance-healthd.toml(5), read strictly; cmd.go: the
//     command line.
//   - testhook.go: the watchdog's test hook (hang the loop); the pings
//     themselves are package watchdog's, sent while the loop answers Alive.
//   - execdir.go: which exec programs a backend added over D-Bus may run;
//     route.go: the source address a tunnel probe uses.
//
// It talks to caplanced only over D-Bus and changes nothing on the host; the
// probes themselves are package probe's. It must not decide health
// anywhere but in Machine, nor call caplanced anywhere but in report.go and
// the follower's sync.
package healthd
