package benchnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// CPUProbe samples where CPU time goes: the whole machine, the generator's
// and the sink's threads, caplanced and the kernel's softirq threads.
type CPUProbe struct {
	GenTID, SinkTID int
	LBPID           int // 0: no caplanced
	Ksoftirqd       []int
}

// CPUSample is a CPUProbe's reading; the machine's figures are all CPUs'.
type CPUSample struct {
	Busy, Softirq            time.Duration // /proc/stat: busy excludes idle, iowait and steal
	Gen, Sink, LB, Ksoftirqd time.Duration
	// caplanced's user and system time (/proc/<pid>/stat, all threads) and
	// how many times its threads were scheduled in.
	LBUser, LBSys time.Duration
	LBRuns        uint64
}

// Minus is s - o, field by field.
func (s CPUSample) Minus(o CPUSample) CPUSample {
	return CPUSample{
		Busy: s.Busy - o.Busy, Softirq: s.Softirq - o.Softirq,
		Gen: s.Gen - o.Gen, Sink: s.Sink - o.Sink, LB: s.LB - o.LB, Ksoftirqd: s.Ksoftirqd - o.Ksoftirqd,
		LBUser: s.LBUser - o.LBUser, LBSys: s.LBSys - o.LBSys, LBRuns: s.LBRuns - o.LBRuns,
	}
}

// Split describes a difference of samples over wall time d, which moved
// pkts packets, in shares of one CPU.
func (s CPUSample) Split(d time.Duration, pkts uint64) string {
	pct := func(t time.Duration) string { return fmt.Sprintf("%.0f%%", 100*t.Seconds()/d.Seconds()) }
	other := s.Busy - s.Gen - s.Sink - s.LB - s.Ksoftirqd
	out := fmt.Sprintf("machine busy %s of %d00%% (softirq %s): generator %s, sink %s, caplanced %s, ksoftirqd %s, rest %s",
		pct(s.Busy), runtime.NumCPU(), pct(s.Softirq), pct(s.Gen), pct(s.Sink), pct(s.LB), pct(s.Ksoftirqd), pct(other))
	if s.LBRuns > 0 {
		out += fmt.Sprintf("; caplanced user %s system %s, %.1f packets per time scheduled", pct(s.LBUser), pct(s.LBSys), float64(pkts)/float64(s.LBRuns))
	}
	return out
}

// Sample reads the counters; a figure it cannot read stays 0.
func (p *CPUProbe) Sample() CPUSample {
	var s CPUSample
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		// cpu user nice system idle iowait irq softirq steal guest guest_nice,
		// in USER_HZ (1/100 s); guest time is already in user.
		f := strings.Fields(line)
		tick := func(i int) time.Duration {
			if i >= len(f) {
				return 0
			}
			v, _ := strconv.ParseUint(f[i], 10, 64)
			return time.Duration(v) * 10 * time.Millisecond
		}
		s.Busy = tick(1) + tick(2) + tick(3) + tick(6) + tick(7)
		s.Softirq = tick(7)
	}
	s.Gen, _ = readSchedstat(fmt.Sprintf("/proc/self/task/%d/schedstat", p.GenTID))
	s.Sink, _ = readSchedstat(fmt.Sprintf("/proc/self/task/%d/schedstat", p.SinkTID))
	if p.LBPID != 0 {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p.LBPID))
		for _, t := range tasks {
			run, runs := readSchedstat(t)
			s.LB += run
			s.LBRuns += runs
		}
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.LBPID)); err == nil {
			// Fields 14 and 15, utime and stime in USER_HZ, counted from
			// the one after the state (field 3), which follows the name.
			st := string(data)
			f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
			if len(f) > 12 {
				u, _ := strconv.ParseUint(f[11], 10, 64)
				k, _ := strconv.ParseUint(f[12], 10, 64)
				s.LBUser, s.LBSys = time.Duration(u)*10*time.Millisecond, time.Duration(k)*10*time.Millisecond
			}
		}
	}
	for _, pid := range p.Ksoftirqd {
		run, _ := readSchedstat(fmt.Sprintf("/proc/%d/schedstat", pid))
		s.Ksoftirqd += run
	}
	return s
}

// readSchedstat returns the CPU time a task has run and how many times it
// was scheduled in, from its schedstat file (softirq work done on the
// task's time is included: this kernel does not account IRQ time apart).
func readSchedstat(path string) (time.Duration, uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return 0, 0
	}
	run, _ := strconv.ParseInt(f[0], 10, 64)
	runs, _ := strconv.ParseUint(f[2], 10, 64)
	return time.Duration(run), runs
}

// KernelThreads returns the PIDs of the kernel threads whose name starts
// with prefix.
func KernelThreads(prefix string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.HasPrefix(string(comm), prefix) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, errors.New("no " + prefix + " kernel threads found")
	}
	return pids, nil
}
