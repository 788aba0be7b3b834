package maglev

import (
	"encoding/binary"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fuzzInput encodes a backend set as FuzzNew's arguments: names one per line, weights as
// little-endian uint32s (a missing weight is 1).
func fuzzInput(bs []Backend) (string, []byte) {
	names := make([]string, len(bs))
	var weights []byte
	for i, b := range bs {
		names[i] = b.Name
		weights = binary.LittleEndian.AppendUint32(weights, b.Weight)
	}
	return strings.Join(names, "\n"), weights
}

// FuzzNew checks that New never panics, fails only with its documented errors, and that every
// table it returns keeps the invariants: sorted backends, valid indices, slot counts summing to M,
// none for weight 0, at least one for weight > 0, within one slot of the exact share when every
// share is at least one slot, and the same table for the reversed input.
func FuzzNew(f *testing.F) {
	for _, tc := range errorCases {
		names, weights := fuzzInput(tc.backends)
		f.Add(names, weights, tc.size)
	}
	for _, tc := range apportionCases {
		names, weights := fuzzInput(weighted(tc.weights...))
		f.Add(names, weights, tc.size)
	}
	for _, tc := range goldenCases {
		names, weights := fuzzInput(tc.backends)
		f.Add(names, weights, tc.size)
	}
	f.Fuzz(func(t *testing.T, names string, weights []byte, size int) {
		if size > 1<<17 && size <= MaxSize {
			size %= 1 << 17 // valid large tables take too long to build per input
		}
		var bs []Backend
		if names != "" {
			for i, name := range strings.Split(names, "\n") {
				w := uint32(1)
				if len(weights) >= 4*i+4 {
					w = binary.LittleEndian.Uint32(weights[4*i:])
				}
				bs = append(bs, Backend{name, w})
			}
		}
		in := slices.Clone(bs)
		tbl, err := New(bs, size)
		if diff := cmp.Diff(in, bs); diff != "" {
			t.Fatalf("New modified its input (-want +got):\n%s", diff)
		}
		if err != nil {
			for _, want := range []error{ErrInvalidSize, ErrEmptyName, ErrDuplicateName, ErrTooManyBackends} {
				if errors.Is(err, want) {
					return
				}
			}
			t.Fatalf("New: undocumented error %v", err)
		}
		checkTable(t, bs, size, tbl)
		slices.Reverse(bs)
		sameSlots(t, owners(tbl), owners(mustNew(t, bs, size)))
	})
}

func checkTable(t *testing.T, bs []Backend, size int, tbl *Table) {
	t.Helper()
	if tbl.Size() != size {
		t.Fatalf("Size() = %d, want %d", tbl.Size(), size)
	}
	sorted := slices.Clone(bs)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	got := tbl.Backends()
	if diff := cmp.Diff(sorted, got); diff != "" {
		t.Fatalf("Backends() (-want +got):\n%s", diff)
	}
	counts := make([]int, len(got))
	for s, i := range owners(tbl) {
		if i < -1 || i >= len(got) {
			t.Fatalf("slot %d: Lookup = %d, outside -1..%d", s, i, len(got)-1)
		}
		if i >= 0 {
			counts[i]++
		}
	}
	total, minWeight := new(big.Int), uint32(0)
	for _, b := range got {
		total.Add(total, big.NewInt(int64(b.Weight)))
		if b.Weight > 0 && (minWeight == 0 || b.Weight < minWeight) {
			minWeight = b.Weight
		}
	}
	if total.Sign() == 0 {
		if slices.ContainsFunc(counts, func(c int) bool { return c != 0 }) {
			t.Fatalf("no weights, yet slots are owned: %v", counts)
		}
		return
	}
	// Every share is at least one slot when the lightest one is: M·w_min ≥ Σw.
	exactWithinOne := new(big.Int).Mul(big.NewInt(int64(size)), big.NewInt(int64(minWeight))).Cmp(total) >= 0
	sum := 0
	for i, b := range got {
		c := counts[i]
		sum += c
		switch {
		case b.Weight == 0 && c != 0:
			t.Errorf("backend %q has weight 0 and owns %d slots", b.Name, c)
		case b.Weight > 0 && c == 0:
			t.Errorf("backend %q has weight %d and owns no slot", b.Name, b.Weight)
		case b.Weight > 0 && exactWithinOne:
			// |c − M·w/Σw| < 1  ⇔  |c·Σw − M·w| < Σw
			d := new(big.Int).Mul(big.NewInt(int64(c)), total)
			d.Sub(d, new(big.Int).Mul(big.NewInt(int64(size)), big.NewInt(int64(b.Weight))))
			if d.Abs(d).Cmp(total) >= 0 {
				t.Errorf("backend %q weight %d of %v owns %d of %d slots, not within one slot of its share", b.Name, b.Weight, total, c, size)
			}
		}
	}
	if sum != size {
		t.Errorf("backends own %d slots, want all %d", sum, size)
	}
}
