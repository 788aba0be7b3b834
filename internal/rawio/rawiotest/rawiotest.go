// Package rawiotest helps tests of the data path check how its sockets are
// wired into the process.
package rawiotest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Polled reports whether fd is watched by an epoll instance of this process
// — for a socket, whether the Go runtime's network poller (the process's
// only epoll) is woken by its traffic.
func Polled(fd int) (bool, error) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			return false, fmt.Errorf("rawiotest: %w", err)
		}
		// One line per watched descriptor: "tfd:       12 events: …".
		for _, line := range strings.Split(string(info), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true, nil
			}
		}
	}
	return false, nil
}
