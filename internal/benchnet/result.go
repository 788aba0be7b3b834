package benchnet

import (
	"fmt"
	"testing"
)

// Result is one run's numbers.
type Result struct {
	Sent, Delivered uint64 // of the measured phase
	Offered, PPS    float64
	LossPct         float64
	// MachineNsPerPkt is the whole machine's busy time over the measured
	// phase per delivered packet; CaplancedNsPerPkt caplanced's threads'
	// per packet it forwarded (0 without caplanced), which the caller sets.
	MachineNsPerPkt, CaplancedNsPerPkt float64
	// Split says where the machine's CPU went; Losses where packets were
	// lost, from counters (the caller's).
	Split, Losses string
	// RatesTried is, for a search's best trial, how many rates it tried.
	RatesTried int
}

// NewResult is the numbers of a run whose generator did gen and whose sink
// counted counts.
func NewResult(gen GenResult, counts SinkCounts) *Result {
	r := &Result{
		Sent:      gen.Sent,
		Delivered: counts.Measured,
		Offered:   float64(gen.Sent) / gen.Elapsed.Seconds(),
		PPS:       float64(counts.Measured) / gen.Elapsed.Seconds(),
	}
	if gen.Sent > 0 {
		r.LossPct = 100 * (float64(gen.Sent) - float64(counts.Measured)) / float64(gen.Sent)
	}
	cpu := gen.End.Minus(gen.Start)
	if counts.Measured > 0 {
		r.MachineNsPerPkt = float64(cpu.Busy) / float64(counts.Measured)
	}
	r.Split = cpu.Split(gen.Elapsed, counts.Measured)
	return r
}

// Report reports r's metrics and logs a summary; kernel, when known, is the
// kernel-forwarding result it is compared with (x-kernel).
func (r *Result) Report(b *testing.B, what string, kernel *Result) {
	b.Helper()
	b.ReportMetric(r.PPS, "pps")
	b.ReportMetric(r.Offered, "offered-pps")
	b.ReportMetric(r.LossPct, "loss-%")
	b.ReportMetric(r.MachineNsPerPkt, "machine-cpu-ns/pkt")
	var ratio, own string
	if kernel != nil && kernel.PPS > 0 {
		b.ReportMetric(r.PPS/kernel.PPS, "x-kernel")
		ratio = fmt.Sprintf(" = %.2f× kernel forwarding", r.PPS/kernel.PPS)
	}
	if r.CaplancedNsPerPkt > 0 {
		b.ReportMetric(r.CaplancedNsPerPkt, "caplanced-cpu-ns/pkt")
		own = fmt.Sprintf(", caplanced %.0f", r.CaplancedNsPerPkt)
	}
	b.Logf("%s: offered %.0f pps, delivered %.0f pps%s, loss %.2f%%; CPU per packet: machine %.0f ns%s",
		what, r.Offered, r.PPS, ratio, r.LossPct, r.MachineNsPerPkt, own)
	b.Logf("  cpu: %s", r.Split)
	b.Logf("  counters: %s", r.Losses)
}

// ReportLossless reports r, a search's best trial: its delivered rate as the
// highest lossless rate, its CPU per packet, and, against kernel's (nil for
// the kernel itself), both as ratios (x-kernel, x-kernel-cpu).
func (r *Result) ReportLossless(b *testing.B, what string, kernel *Result) {
	b.Helper()
	b.ReportMetric(r.PPS, "lossless-pps")
	b.ReportMetric(float64(r.RatesTried), "rates-tried")
	b.ReportMetric(r.MachineNsPerPkt, "machine-cpu-ns/pkt")
	var ratio, own string
	if kernel != nil && kernel.PPS > 0 && kernel.MachineNsPerPkt > 0 {
		b.ReportMetric(r.PPS/kernel.PPS, "x-kernel")
		b.ReportMetric(r.MachineNsPerPkt/kernel.MachineNsPerPkt, "x-kernel-cpu")
		ratio = fmt.Sprintf(" = %.2f× kernel forwarding's; machine CPU %.2f× its", r.PPS/kernel.PPS, r.MachineNsPerPkt/kernel.MachineNsPerPkt)
	}
	if r.CaplancedNsPerPkt > 0 {
		b.ReportMetric(r.CaplancedNsPerPkt, "caplanced-cpu-ns/pkt")
		own = fmt.Sprintf(", caplanced %.0f", r.CaplancedNsPerPkt)
	}
	b.Logf("%s: highest lossless rate %.0f pps (loss %.3f%%)%s; CPU per packet: machine %.0f ns%s",
		what, r.PPS, r.LossPct, ratio, r.MachineNsPerPkt, own)
	b.Logf("  cpu: %s", r.Split)
	b.Logf("  counters: %s", r.Losses)
}
