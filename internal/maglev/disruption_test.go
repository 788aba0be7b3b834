package maglev

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// changedFraction is the fraction of slots whose owner (by name) differs between two tables of the
// same size: the share of new flows that would move to another backend.
func changedFraction(before, after *Table) float64 {
	// moved[i] is the after-table index of the before-table's backend i, or -1 if it left.
	moved := make([]int, len(before.backends))
	for i, b := range before.backends {
		moved[i] = -1
		if j, ok := slices.BinarySearchFunc(after.backends, b.Name, func(a Backend, name string) int {
			return strings.Compare(a.Name, name)
		}); ok {
			moved[i] = j
		}
	}
	changed := 0
	for s := range before.Size() {
		b, a := before.Lookup(uint64(s)), after.Lookup(uint64(s))
		if b < 0 || moved[b] != a {
			changed++
		}
	}
	return float64(changed) / float64(before.Size())
}

// idealChange is the least any table could change from weights before to weights after (by name):
// the total share that must move, half the L1 distance between the two share vectors.
func idealChange(before, after []Backend) float64 {
	share := func(bs []Backend) map[string]float64 {
		var total float64
		for _, b := range bs {
			total += float64(b.Weight)
		}
		m := make(map[string]float64, len(bs))
		for _, b := range bs {
			m[b.Name] = float64(b.Weight) / total
		}
		return m
	}
	sb, sa := share(before), share(after)
	var moved float64
	for name, s := range sa {
		if d := s - sb[name]; d > 0 {
			moved += d
		}
	}
	return moved
}

// TestDisruption is the setup of the paper's Fig. 12: k of N backends leave (chosen at random,
// several trials), and we measure the share of slots whose owner changes against the ideal, the
// share that must move (the leavers' own share, k/N with equal weights). Where M ≥ 100·N, every
// trial must stay within 1.5 × ideal + 0.5 percentage points.
//
// With N = 1000 and M = 65537 (M/N ≈ 65, the paper's Fig. 12 setting) the paper's algorithm itself
// exceeds that bound (about 0.7% for an ideal 0.1%, 3.3% for 1%); there the test instead requires
// no more change than the paper's plain algorithm on the same sets, and the N = 1000 rows are
// repeated with M = 655373 to show the bound holding once M ≥ 100·N. The weighted and
// weight-change rows check that the interleaved schedule keeps the property. The test logs a
// table for docs/benchmarks.md.
func TestDisruption(t *testing.T) {
	const trials = 5
	type change struct {
		name    string
		n, k, m int
		before  func(n int) []Backend
		apply   func(bs []Backend, k int, rng *rand.Rand) []Backend // returns the new set
	}
	leave := func(bs []Backend, k int, rng *rand.Rand) []Backend {
		out := append([]Backend(nil), bs...)
		rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out[k:]
	}
	double := func(bs []Backend, k int, rng *rand.Rand) []Backend {
		out := append([]Backend(nil), bs...)
		for _, i := range rng.Perm(len(out))[:k] {
			out[i].Weight *= 2
		}
		return out
	}
	ones := func(n int) []Backend { return equal(n, 1) }
	oneToFour := func(n int) []Backend {
		bs := equal(n, 0)
		for i := range bs {
			bs[i].Weight = uint32(i%4 + 1)
		}
		return bs
	}
	var cases []change
	for _, nm := range [][2]int{{10, DefaultSize}, {100, DefaultSize}, {1000, DefaultSize}, {1000, 655373}} {
		n, m := nm[0], nm[1]
		var last int
		for _, k := range []int{1, (n + 99) / 100, (n + 19) / 20} {
			if k != last { // for N = 10, 1% and 5% both round up to 1
				cases = append(cases, change{"equal weights, k leave", n, k, m, ones, leave})
				last = k
			}
		}
	}
	for _, k := range []int{1, 5} {
		cases = append(cases, change{"weights 1..4, k leave", 100, k, DefaultSize, oneToFour, leave})
	}
	for _, k := range []int{1, 5} {
		cases = append(cases, change{"equal weights, k doubled", 100, k, DefaultSize, ones, double})
	}

	var report strings.Builder
	fmt.Fprintf(&report, "\n| change | N | k | M | measured %% (mean of %d) | measured %% (worst) | ideal %% (mean) |\n|---|---|---|---|---|---|---|\n", trials)
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/N=%d/k=%d/M=%d", tc.name, tc.n, tc.k, tc.m), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.n), uint64(tc.k)))
			before := tc.before(tc.n)
			tblBefore := mustNew(t, before, tc.m)
			var sum, worst, idealSum float64
			for range trials {
				after := tc.apply(before, tc.k, rng)
				ideal := idealChange(before, after)
				got := changedFraction(tblBefore, mustNew(t, after, tc.m))
				if tc.m >= 100*tc.n {
					if limit := 1.5*ideal + 0.005; got > limit {
						t.Errorf("%.3f%% of slots changed owner, want ≤ %.3f%% (ideal %.3f%%)", 100*got, 100*limit, 100*ideal)
					}
				} else if paper := paperChange(before, after, tc.m); got > paper {
					t.Errorf("%.3f%% of slots changed owner, more than the paper's algorithm (%.3f%%)", 100*got, 100*paper)
				}
				sum += got
				idealSum += ideal
				worst = max(worst, got)
			}
			fmt.Fprintf(&report, "| %s | %d | %d | %d | %.3f | %.3f | %.3f |\n", tc.name, tc.n, tc.k, tc.m, 100*sum/trials, 100*worst, 100*idealSum/trials)
		})
	}
	t.Logf("disruption:%s", report.String())
}

// paperChange is changedFraction for the paper's unweighted algorithm (plainMaglev).
func paperChange(before, after []Backend, m int) float64 {
	table := func(bs []Backend) []string {
		names := make([]string, len(bs))
		for i, b := range bs {
			names[i] = b.Name
		}
		slices.Sort(names)
		out := make([]string, m)
		for s, i := range plainMaglev(names, m) {
			out[s] = names[i]
		}
		return out
	}
	tb, ta := table(before), table(after)
	changed := 0
	for s := range tb {
		if tb[s] != ta[s] {
			changed++
		}
	}
	return float64(changed) / float64(m)
}
