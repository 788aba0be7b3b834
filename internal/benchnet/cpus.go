package benchnet

import (
	"context"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/netnstest"
)

// GenCPU is the CPU the generator's thread runs on, and the one
// SteerReceive keeps receive processing off. On veth, the receiving side's
// softirq work (the bridge, and whatever forwards after it) runs on the
// sending CPU, on the sender's time, unless RPS hands it to another: without
// that the generator pays for the path it measures and, on two CPUs, is
// the bottleneck of kernel forwarding.
const GenCPU = 0

// pin binds the calling thread to GenCPU if the machine has another CPU for
// the rest.
func pin() error {
	if runtime.NumCPU() < 2 {
		return nil
	}
	var set unix.CPUSet
	set.Set(GenCPU)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning the generator to CPU %d: %w", GenCPU, err)
	}
	return nil
}

// SteerReceive has the frames arriving on link, in sw (a lab's switch
// namespace, where the generator's link ends), processed on every CPU but
// GenCPU: RPS, /sys/class/net/<link>/queues/rx-0/rps_cpus, written inside
// the namespace (`ip netns exec` mounts its /sys). It does nothing on a
// machine with one CPU.
func SteerReceive(ctx context.Context, sw *netnstest.Host, link string) error {
	n := runtime.NumCPU()
	if n < 2 {
		return nil
	}
	// A hex mask, in comma-separated 32-bit words, most significant first.
	words := make([]uint32, (n+31)/32)
	for cpu := range n {
		if cpu != GenCPU {
			words[cpu/32] |= 1 << (cpu % 32)
		}
	}
	var mask []string
	for i := len(words) - 1; i >= 0; i-- {
		mask = append(mask, fmt.Sprintf("%08x", words[i]))
	}
	path := "/sys/class/net/" + link + "/queues/rx-0/rps_cpus"
	out, err := sw.Command(ctx, "sh", "-c", `echo "$1" > "$2"`, "sh", strings.Join(mask, ","), path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("steering %s's receive processing off CPU %d: %w: %s", link, GenCPU, err, out)
	}
	return nil
}
