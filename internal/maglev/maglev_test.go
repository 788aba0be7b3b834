package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// equal returns n backends named "backend-0000"… with weight w.
func equal(n int, w uint32) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("backend-%04d", i), Weight: w}
	}
	return bs
}

// weighted returns backends named "backend-0000"… with the given weights.
func weighted(ws ...uint32) []Backend {
	bs := equal(len(ws), 0)
	for i, w := range ws {
		bs[i].Weight = w
	}
	return bs
}

func mustNew(t testing.TB, bs []Backend, size int) *Table {
	t.Helper()
	tbl, err := New(bs, size)
	if err != nil {
		t.Fatalf("New(%d backends, %d): %v", len(bs), size, err)
	}
	return tbl
}

// owners returns Lookup's answer for every slot.
func owners(tbl *Table) []int {
	out := make([]int, tbl.Size())
	for i := range out {
		out[i] = tbl.Lookup(uint64(i))
	}
	return out
}

// slotCounts returns how many slots each backend (in Backends() order) owns.
func slotCounts(tbl *Table) []int {
	c := make([]int, len(tbl.Backends()))
	for _, o := range owners(tbl) {
		if o >= 0 {
			c[o]++
		}
	}
	return c
}

// sameSlots reports the first slot where a and b differ, so a failure does not print 65537 ints.
func sameSlots(t *testing.T, want, got []int) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("table size: want %d, got %d", len(want), len(got))
	}
	for i := range want {
		if want[i] != got[i] {
			t.Fatalf("slot %d: want backend %d, got %d", i, want[i], got[i])
		}
	}
}

// plainMaglev is the paper's Pseudocode 1, written literally: unweighted round robin over the
// backends in the given order, permutation[i][j] = (offset + j·skip) mod M computed on demand.
// It is the oracle for equal weights and the baseline of BenchmarkNew.
func plainMaglev(names []string, m int) []int {
	entry := make([]int, m)
	for i := range entry {
		entry[i] = -1
	}
	if len(names) == 0 {
		return entry
	}
	offset, skip := make([]int, len(names)), make([]int, len(names))
	for i, name := range names {
		o, s := permutation(name, uint32(m))
		offset[i], skip[i] = int(o), int(s)
	}
	next := make([]int, len(names))
	for n := 0; ; {
		for i := range names {
			c := (offset[i] + next[i]*skip[i]) % m
			for entry[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % m
			}
			entry[c] = i
			next[i]++
			if n++; n == m {
				return entry
			}
		}
	}
}

func TestIsPrime(t *testing.T) {
	const limit = 20000
	composite := make([]bool, limit)
	for i := 2; i < limit; i++ {
		for j := 2 * i; j < limit; j += i {
			composite[j] = true
		}
	}
	for n := -5; n < limit; n++ {
		want := n >= 2 && !composite[n]
		if got := IsPrime(n); got != want {
			t.Errorf("IsPrime(%d) = %v, want %v", n, got, want)
		}
	}
	for _, tc := range []struct {
		n    int
		want bool
	}{
		{DefaultSize, true}, {655373, true}, {MaxSize, true}, {2147483647, true}, {1<<61 - 1, true},
		{65536, false}, {561, false}, {41041, false}, {4294967297, false}, {math.MaxInt64, false},
		{math.MinInt64, false},
	} {
		if got := IsPrime(tc.n); got != tc.want {
			t.Errorf("IsPrime(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// errorCases are backend sets and sizes New must reject; FuzzNew starts from them too.
var errorCases = []struct {
	name     string
	backends []Backend
	size     int
	want     error
	msg      string
}{
	{"size zero", equal(3, 1), 0, ErrInvalidSize, "invalid table size 0: want a prime from 101 to 16777213"},
	{"size negative", equal(3, 1), -65537, ErrInvalidSize, "invalid table size -65537: want a prime from 101 to 16777213"},
	{"size prime below minimum", equal(3, 1), 97, ErrInvalidSize, "invalid table size 97: want a prime from 101 to 16777213"},
	{"size just below minimum", equal(3, 1), 100, ErrInvalidSize, "invalid table size 100: want a prime from 101 to 16777213"},
	{"size not prime", equal(3, 1), 65536, ErrInvalidSize, "invalid table size 65536: want a prime from 101 to 16777213, such as 65537"},
	{"size odd not prime", equal(3, 1), 103 * 107, ErrInvalidSize, "invalid table size 11021: want a prime from 101 to 16777213, such as 11027"},
	{"size prime above maximum", equal(3, 1), 16777259, ErrInvalidSize, "invalid table size 16777259: want a prime from 101 to 16777213"},
	{"empty name", []Backend{{"a", 1}, {"", 1}}, MinSize, ErrEmptyName, "backend at index 1: empty name"},
	{"empty name weight 0", []Backend{{"", 0}}, MinSize, ErrEmptyName, "backend at index 0: empty name"},
	{"duplicate name", []Backend{{"web1", 1}, {"web2", 1}, {"web1", 2}}, MinSize, ErrDuplicateName, `backend "web1": name used more than once`},
	{"duplicate name weight 0", []Backend{{"web1", 0}, {"web1", 0}}, MinSize, ErrDuplicateName, `backend "web1": name used more than once`},
	{"too many backends", equal(102, 1), MinSize, ErrTooManyBackends, "102 backends with weight > 0 for table size 101: more backends with weight > 0 than table slots"},
}

func TestNewErrors(t *testing.T) {
	if !IsPrime(16777259) {
		t.Fatal("test case assumes 16777259 is prime")
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			tbl, err := New(tc.backends, tc.size)
			if !errors.Is(err, tc.want) {
				t.Fatalf("New: error %v, want %v", err, tc.want)
			}
			if diff := cmp.Diff(tc.msg, err.Error()); diff != "" {
				t.Errorf("error message (-want +got):\n%s", diff)
			}
			if tbl != nil {
				t.Errorf("New returned a table with error %v", err)
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"minimum size", equal(3, 1), MinSize},
		{"as many backends as slots", equal(MinSize, 1), MinSize},
		{"more backends than slots, extra ones weight 0", func() []Backend {
			bs := equal(MinSize+50, 1)
			for i := range 50 {
				bs[i*3].Weight = 0
			}
			return bs
		}(), MinSize},
		{"no backends", nil, MinSize},
		{"maximum weights", weighted(math.MaxUint32, math.MaxUint32, 1), DefaultSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := mustNew(t, tc.backends, tc.size)
			if tbl.Size() != tc.size {
				t.Errorf("Size() = %d, want %d", tbl.Size(), tc.size)
			}
		})
	}
	// Building a table this large takes seconds; that the size passes validation is what matters.
	if err := checkSize(MaxSize); err != nil {
		t.Errorf("checkSize(MaxSize): %v", err)
	}
}

// goldenCases pin the hashes and the population order: a change to either reshuffles every
// balancer's table, which must never happen by accident.
var goldenCases = []struct {
	name     string
	backends []Backend
	size     int
}{
	{"weighted-5", []Backend{
		{"web-a.example.net", 1}, {"web-b.example.net", 2}, {"web-c.example.net", 3},
		{"web-d.example.net", 5}, {"web-e.example.net", 0},
	}, DefaultSize},
	{"equal-3-min", []Backend{{"10.0.0.1", 1}, {"10.0.0.2", 1}, {"10.0.0.3", 1}}, MinSize},
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			tbl := mustNew(t, tc.backends, tc.size)
			h := sha256.New()
			for _, o := range owners(tbl) {
				h.Write(binary.LittleEndian.AppendUint32(nil, uint32(int32(o))))
			}
			var b strings.Builder
			fmt.Fprintf(&b, "# sha256 of every slot's owner index (int32 little-endian) in slot order\n")
			fmt.Fprintf(&b, "size %d\nsha256 %x\n", tbl.Size(), h.Sum(nil))
			for i, c := range slotCounts(tbl) {
				be := tbl.Backends()[i]
				fmt.Fprintf(&b, "backend %d %s weight %d slots %d\n", i, be.Name, be.Weight, c)
			}
			got := b.String()
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", path, diff)
			}
		})
	}
}

func TestOrderIndependence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []Backend
		size     int
	}{
		{"equal 10", equal(10, 1), DefaultSize},
		{"weighted 7", weighted(1, 9, 3, 0, 4, 4, 2), DefaultSize},
		{"equal 100 small", equal(100, 3), MinSize},
		{"weighted 1000", func() []Backend {
			bs := equal(1000, 0)
			for i := range bs {
				bs[i].Weight = uint32(i%7) * 10
			}
			return bs
		}(), DefaultSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := mustNew(t, tc.backends, tc.size)
			wantSlots := owners(want)
			rng := rand.New(rand.NewPCG(1, 2))
			for range 25 {
				in := slices.Clone(tc.backends)
				rng.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
				before := slices.Clone(in)
				got := mustNew(t, in, tc.size)
				if diff := cmp.Diff(before, in); diff != "" {
					t.Fatalf("New modified its input (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(want.Backends(), got.Backends()); diff != "" {
					t.Fatalf("Backends() (-want +got):\n%s", diff)
				}
				if !slices.Equal(want.slots, got.slots) {
					sameSlots(t, wantSlots, owners(got))
				}
			}
		})
	}
}

func TestBackendsSortedCopy(t *testing.T) {
	tbl := mustNew(t, []Backend{{"b", 1}, {"c", 0}, {"a", 2}}, MinSize)
	want := []Backend{{"a", 2}, {"b", 1}, {"c", 0}}
	got := tbl.Backends()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Backends() (-want +got):\n%s", diff)
	}
	got[0].Name = "changed"
	if diff := cmp.Diff(want, tbl.Backends()); diff != "" {
		t.Errorf("Backends() after modifying its result (-want +got):\n%s", diff)
	}
}

func TestUnweightedCounts(t *testing.T) {
	for _, m := range []int{MinSize, 1009, DefaultSize} {
		for _, n := range []int{1, 2, 3, 7, 10, 100, 101, 1000} {
			if n > m {
				continue
			}
			t.Run(fmt.Sprintf("N=%d/M=%d", n, m), func(t *testing.T) {
				lo, hi := m/n, (m+n-1)/n
				for i, c := range slotCounts(mustNew(t, equal(n, 1), m)) {
					if c < lo || c > hi {
						t.Errorf("backend %d owns %d slots, want %d..%d", i, c, lo, hi)
					}
				}
			})
		}
	}
}

// TestMatchesPaper: with equal weights the schedule is the paper's round robin, so the table must
// be the paper's table, slot for slot.
func TestMatchesPaper(t *testing.T) {
	for _, tc := range []struct {
		n, m   int
		weight uint32
	}{
		{1, MinSize, 1}, {3, MinSize, 1}, {101, MinSize, 5}, {10, DefaultSize, 1},
		{100, DefaultSize, 7}, {1000, DefaultSize, 1}, {1000, 655373, math.MaxUint32},
	} {
		t.Run(fmt.Sprintf("N=%d/M=%d/weight=%d", tc.n, tc.m, tc.weight), func(t *testing.T) {
			bs := equal(tc.n, tc.weight)
			names := make([]string, len(bs))
			for i, b := range bs {
				names[i] = b.Name
			}
			sameSlots(t, plainMaglev(names, tc.m), owners(mustNew(t, bs, tc.m)))
		})
	}
}

// apportionCases give exact slot counts (in name order) for weights; the weights' backends are
// named in the order given. FuzzNew starts from them too.
var apportionCases = []struct {
	name    string
	weights []uint32
	size    int
	want    []int
}{
	// 101/3 = 33.67 each: the two leftover slots go to the earlier names.
	{"equal thirds", []uint32{1, 1, 1}, MinSize, []int{34, 34, 33}},
	// 10.1, 20.2, 30.3, 40.4: the leftover goes to the largest fraction.
	{"1 2 3 4", []uint32{1, 2, 3, 4}, MinSize, []int{10, 20, 30, 41}},
	// 40.4, 40.4, 20.2: a tie on the fraction goes to the earlier name.
	{"tie on fraction", []uint32{2, 2, 1}, MinSize, []int{41, 40, 20}},
	// 37.875, 0, 63.125.
	{"weight 0 in the middle", []uint32{3, 0, 5}, MinSize, []int{38, 0, 63}},
	// 0.1 and 100.9: a backend with weight > 0 gets at least one slot.
	{"share below one slot", []uint32{1, 1000}, MinSize, []int{1, 100}},
	// 0.25, 0.5, 100.25: both light ones get one slot, the rest goes to the heavy one.
	{"two shares below one slot", []uint32{1, 2, 400}, MinSize, []int{1, 1, 99}},
	// 6553.7 each: seven get the extra slot.
	{"equal tenths of 65537", []uint32{5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, DefaultSize,
		[]int{6554, 6554, 6554, 6554, 6554, 6554, 6554, 6553, 6553, 6553}},
	// Σ = 2³³-2+1: the products need 128 bits.
	{"maximum weights", []uint32{math.MaxUint32, 1, math.MaxUint32}, DefaultSize, []int{32768, 1, 32768}},
	{"only one", []uint32{0, 0, 9}, MinSize, []int{0, 0, 101}},
	{"all zero", []uint32{0, 0}, MinSize, []int{0, 0}},
}

func TestApportionExact(t *testing.T) {
	for _, tc := range apportionCases {
		t.Run(tc.name, func(t *testing.T) {
			got := slotCounts(mustNew(t, weighted(tc.weights...), tc.size))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("slot counts (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWeightedShares requires every backend's slot count to be within one slot of its exact share
// M·w/Σw, and its share of the table within 1% (relative: |share − w/Σw| ≤ 0.01·w/Σw). The 1%
// follows from the one slot when the exact share is at least 100 slots, which M > 100·N gives for
// equal weights; with unequal weights, the lightest backend must have 100 slots, so the cases
// check that too.
func TestWeightedShares(t *testing.T) {
	cycle := func(n int, ws ...uint32) []uint32 {
		out := make([]uint32, n)
		for i := range out {
			out[i] = ws[i%len(ws)]
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		weights []uint32
		size    int
	}{
		{"1 2 3 4 5", []uint32{1, 2, 3, 4, 5}, DefaultSize},
		{"1 and 10", []uint32{1, 10, 10, 10}, DefaultSize},
		{"large weights", []uint32{1000000000, 3000000000, 4000000000}, DefaultSize},
		{"100 weights 1..4", cycle(100, 1, 2, 3, 4), DefaultSize},
		{"100 weights with zeros", cycle(100, 0, 3, 1, 2), DefaultSize},
		{"600 weights 1..6 big table", cycle(600, 1, 2, 3, 4, 5, 6), 655373},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.size <= 100*len(tc.weights) || !IsPrime(tc.size) {
				t.Fatalf("test case needs a prime M > 100·N, not %d", tc.size)
			}
			var total float64
			for _, w := range tc.weights {
				total += float64(w)
			}
			for i, c := range slotCounts(mustNew(t, weighted(tc.weights...), tc.size)) {
				exact := float64(tc.size) * float64(tc.weights[i]) / total
				if exact > 0 && exact < 100 {
					t.Fatalf("test case: backend %d's exact share is %.1f slots, below 100", i, exact)
				}
				if math.Abs(float64(c)-exact) >= 1 {
					t.Errorf("backend %d weight %d: %d slots, want %.3f ± <1", i, tc.weights[i], c, exact)
				}
				want := exact / float64(tc.size)
				got := float64(c) / float64(tc.size)
				if math.Abs(got-want) > 0.01*want {
					t.Errorf("backend %d weight %d: share %.5f, want %.5f ± 1%%", i, tc.weights[i], got, want)
				}
			}
		})
	}
}

// TestScaledWeights: only weight ratios matter, so multiplying every weight changes nothing.
func TestScaledWeights(t *testing.T) {
	want := owners(mustNew(t, weighted(1, 2, 3, 0, 7), DefaultSize))
	sameSlots(t, want, owners(mustNew(t, weighted(1000, 2000, 3000, 0, 7000), DefaultSize)))
}

func TestZeroWeight(t *testing.T) {
	t.Run("owns no slot", func(t *testing.T) {
		tbl := mustNew(t, []Backend{{"a", 1}, {"b", 0}, {"c", 1}}, DefaultSize)
		if diff := cmp.Diff([]int{32769, 0, 32768}, slotCounts(tbl)); diff != "" {
			t.Errorf("slot counts (-want +got):\n%s", diff)
		}
	})
	for _, tc := range []struct {
		name     string
		backends []Backend
	}{
		{"all zero", weighted(0, 0, 0)},
		{"no backends", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := mustNew(t, tc.backends, MinSize)
			for _, h := range []uint64{0, 1, 100, 101, math.MaxUint64} {
				if got := tbl.Lookup(h); got != -1 {
					t.Errorf("Lookup(%d) = %d, want -1", h, got)
				}
			}
			if diff := cmp.Diff(tc.backends, tbl.Backends()); diff != "" {
				t.Errorf("Backends() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tbl := mustNew(t, equal(100, 1), DefaultSize)
	h := uint64(0)
	if allocs := testing.AllocsPerRun(1000, func() { h += uint64(tbl.Lookup(h)) + 0x9e3779b97f4a7c15 }); allocs != 0 {
		t.Errorf("Lookup: %v allocations per call, want 0", allocs)
	}
}

// TestConcurrentSwap is the pattern the daemon uses: readers load the current table and look up
// without locks while a writer publishes new tables. Run it with -race.
func TestConcurrentSwap(t *testing.T) {
	var current atomic.Pointer[Table]
	current.Store(mustNew(t, equal(3, 1), MinSize))
	var done atomic.Bool
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			h := uint64(r)
			for n := 0; n < 20000 || !done.Load(); n++ {
				tbl := current.Load()
				active := 0
				for _, b := range tbl.backends {
					if b.Weight > 0 {
						active++
					}
				}
				h = h*6364136223846793005 + 1442695040888963407
				i := tbl.Lookup(h)
				switch {
				case active == 0 && i != -1:
					t.Errorf("Lookup = %d on a table without weights, want -1", i)
					return
				case active > 0 && (i < 0 || i >= len(tbl.backends) || tbl.backends[i].Weight == 0):
					t.Errorf("Lookup = %d on a table of %d backends, not one with weight > 0", i, len(tbl.backends))
					return
				}
			}
		})
	}
	for n := range 200 {
		bs := equal(n%37, uint32(n%3))
		current.Store(mustNew(t, bs, 1009))
	}
	done.Store(true)
	wg.Wait()
}
