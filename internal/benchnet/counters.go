package benchnet

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// DropCounters are the kernel's counters along one family's path: the
// balancer host's input, raw sockets and forwarding, the sink's UDP receive
// errors, and the machine's per-CPU input backlogs (veth delivers into
// them). caplanced reads IPv6 from packet sockets, whose drops only their
// owner can read: the balancer host's input minus what caplanced received
// is their upper bound.
type DropCounters struct {
	LBIn, LBRawDrops, LBForwarded    uint64
	SinkRcvbufErrors, SinkCsumErrors uint64
	BacklogDrops                     uint64
}

// Minus is c - o, field by field.
func (c DropCounters) Minus(o DropCounters) DropCounters {
	return DropCounters{
		LBIn: c.LBIn - o.LBIn, LBRawDrops: c.LBRawDrops - o.LBRawDrops, LBForwarded: c.LBForwarded - o.LBForwarded,
		SinkRcvbufErrors: c.SinkRcvbufErrors - o.SinkRcvbufErrors, SinkCsumErrors: c.SinkCsumErrors - o.SinkCsumErrors,
		BacklogDrops: c.BacklogDrops - o.BacklogDrops,
	}
}

func (c DropCounters) String() string {
	return fmt.Sprintf("balancer host: IP input %d, kernel forwarded %d, raw socket drops %d; sink: rcvbuf errors %d, checksum errors %d; input backlog drops %d",
		c.LBIn, c.LBForwarded, c.LBRawDrops, c.SinkRcvbufErrors, c.SinkCsumErrors, c.BacklogDrops)
}

// RawDrops sums the drops of every raw socket, IPv4 and IPv6, of the
// calling thread's namespace (/proc/thread-self/net is its).
func RawDrops() (uint64, error) {
	var sum uint64
	for _, name := range []string{"raw", "raw6"} {
		raw, err := os.ReadFile("/proc/thread-self/net/" + name)
		if err != nil {
			return 0, err
		}
		// The last column of each socket's line is its drops.
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n")[1:] {
			fields := strings.Fields(line)
			v, _ := strconv.ParseUint(fields[len(fields)-1], 10, 64)
			sum += v
		}
	}
	return sum, nil
}

// BacklogDrops sums the machine's per-CPU input backlog drops
// (/proc/net/softnet_stat: the second column of each CPU's line, in hex).
func BacklogDrops() (uint64, error) {
	data, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, err
	}
	var sum uint64
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			sum += v
		}
	}
	return sum, nil
}

// SNMPCounters returns the named counters of the calling thread's
// namespace, from /proc/net/snmp, whose sections are a line of names then a
// line of values (a counter is named section+name: "IpInReceives"), or
// /proc/net/snmp6, a line per counter ("Ip6InReceives").
func SNMPCounters(names ...string) ([]uint64, error) {
	counters := map[string]uint64{}
	data, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || len(vals) != len(keys) || vals[0] != keys[0] {
			return nil, fmt.Errorf("/proc/net/snmp: line %d: not a section's names then values", i+1)
		}
		section := strings.TrimSuffix(keys[0], ":")
		for j := 1; j < len(keys); j++ {
			counters[section+keys[j]], _ = strconv.ParseUint(vals[j], 10, 64)
		}
	}
	data, err = os.ReadFile("/proc/thread-self/net/snmp6")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if kv := strings.Fields(line); len(kv) == 2 {
			counters[kv[0]], _ = strconv.ParseUint(kv[1], 10, 64)
		}
	}
	values := make([]uint64, len(names))
	for i, n := range names {
		v, ok := counters[n]
		if !ok {
			return nil, fmt.Errorf("/proc/net/snmp, snmp6: no counter %s", n)
		}
		values[i] = v
	}
	return values, nil
}
