// Package netnstest builds throw-away network labs for root tests, the demo
// and the data-path benchmark: named network namespaces ("hosts"), each with
// lo and an eth0 veth whose other end sits on the bridge br0 in a switch
// namespace of its own, so every link of a lab lives inside the lab.
//
// It owns the namespaces it names (a lab's id, prefix plus four random
// characters, followed by "sw" or a host name; see `ip netns list`), the
// registry files under /run/caplance-netnstest, and the processes started
// with Host.Start or found in one of its namespaces: Close and stale cleanup
// SIGKILL them.
// It must not touch the root network namespace (no links, addresses, routes,
// sysctls or nftables rules there), nor any namespace it did not create.
//
// # Interrupted runs
//
// A lab holds an exclusive flock(2) on its registry file for its whole life
// and writes each namespace's name there before creating it. The kernel drops
// the lock when the process dies, whatever the signal, so a registry file
// whose lock can be taken belongs to a dead run: New kills the processes in
// the namespaces it lists, deletes them and removes the file. Unlike a PID in
// the name, the lock cannot be fooled by PID reuse or by PID namespaces.
// Nothing is installed process-wide (no signal handlers): a test binary
// killed by SIGINT, SIGTERM or SIGKILL leaves its lab until the next New.
package netnstest
