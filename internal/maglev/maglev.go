// Package maglev builds the consistent-hashing lookup table of Maglev (Eisenbud et al., "Maglev: A
// Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4) that maps a flow hash to a
// backend, with each backend owning a share of the table proportional to its weight.
//
// The package owns the table: the two name hashes behind each backend's permutation, the
// apportionment of slots to weights, the population order, and what a valid table size is.
// Every balancer behind the same ECMP route must build the identical table from the same backend
// set, so a table depends only on the set of (name, weight) pairs and the size: never on input
// order, on a random seed, on the host or on the Go version.
//
// It must stay pure: no I/O, no clocks, no global mutable state, no netlink, D-Bus or systemd, and
// only the standard library. Building a table is the caller's slow path; swapping it in (for
// example with atomic.Pointer) and tracking established flows belong to other packages.
package maglev

import (
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// Backend is one entry of the set the table is built from.
type Backend struct {
	// Name identifies the backend on every balancer; it alone decides the backend's permutation,
	// so renaming a backend moves its flows, while changing its address does not.
	Name string
	// Weight is the backend's share of new flows relative to the others; 0 keeps the backend in
	// the table's index space but gives it no slot.
	Weight uint32
}

const (
	// DefaultSize is M when the operator does not choose one: the paper's size, ample for a few
	// hundred backends (M should stay above 100·N for shares within about 1%).
	DefaultSize = 65537
	// MinSize is the smallest accepted M; below it a table cannot balance even a handful of
	// backends evenly.
	MinSize = 101
	// MaxSize is the largest accepted M (64 MiB of slots); it keeps a mistyped size from making the
	// daemon allocate gigabytes while rebuilding.
	MaxSize = 16777213
)

// Errors returned by New, wrapped with the offending size or backend; callers branch with errors.Is.
var (
	ErrInvalidSize     = errors.New("invalid table size")
	ErrEmptyName       = errors.New("empty name")
	ErrDuplicateName   = errors.New("name used more than once")
	ErrTooManyBackends = errors.New("more backends with weight > 0 than table slots")
)

// Table maps flow hashes to backends. It is immutable after New, so any number of goroutines may
// call its methods concurrently without locks; to change the backend set, build a new Table and
// publish it (for example through an atomic.Pointer[Table]). Only New makes a usable Table.
type Table struct {
	backends []Backend // sorted by name; Lookup's indices refer to this order
	// slots holds the owner's index in backends plus one, so that the zero value (a table where no
	// backend has weight) makes Lookup return -1 without a branch.
	slots []uint32
}

// New builds a table of size slots (a prime from MinSize to MaxSize) for backends, which it does
// not modify. Each backend with weight > 0 owns at least one slot and otherwise a number of slots
// proportional to its weight; a backend with weight 0 owns none.
func New(backends []Backend, size int) (*Table, error) {
	if err := checkSize(size); err != nil {
		return nil, err
	}
	for i, b := range backends {
		if b.Name == "" {
			return nil, fmt.Errorf("backend at index %d: %w", i, ErrEmptyName)
		}
	}
	// Sorting by byte order (not locale, not input order) is what makes every balancer agree.
	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	active := 0
	for i, b := range sorted {
		if i > 0 && b.Name == sorted[i-1].Name {
			return nil, fmt.Errorf("backend %q: %w", b.Name, ErrDuplicateName)
		}
		if b.Weight > 0 {
			active++
		}
	}
	if active > size {
		return nil, fmt.Errorf("%d backends with weight > 0 for table size %d: %w", active, size, ErrTooManyBackends)
	}
	t := &Table{backends: sorted, slots: make([]uint32, size)}
	if active > 0 {
		populate(t.slots, sorted, active)
	}
	return t, nil
}

// Lookup maps a flow hash to the index of a backend in Backends(), or returns -1 when no backend
// has weight > 0. It reduces hash modulo Size(), so every bit of hash matters. It neither allocates
// nor locks.
func (t *Table) Lookup(hash uint64) int {
	return int(t.slots[hash%uint64(len(t.slots))]) - 1
}

// Backends returns a copy of the backends sorted by name, the order Lookup's index refers to,
// including those with weight 0. It allocates, so call it once per table, not per packet.
func (t *Table) Backends() []Backend {
	return slices.Clone(t.backends)
}

// Size returns the number of slots, M.
func (t *Table) Size() int {
	return len(t.slots)
}

// IsPrime reports whether n is prime. It is exact for every int, because math/big's primality test
// is documented as exact below 2⁶⁴, and cheap enough for validating configuration.
func IsPrime(n int) bool {
	return n > 1 && big.NewInt(int64(n)).ProbablyPrime(0)
}

// checkSize rejects sizes Maglev cannot use: the permutation needs a prime M so that every skip in
// [1, M-1] visits every slot.
func checkSize(size int) error {
	if size >= MinSize && size <= MaxSize && IsPrime(size) {
		return nil
	}
	if size > MinSize && size < MaxSize {
		next := size + 1
		for !IsPrime(next) {
			next++
		}
		return fmt.Errorf("%w %d: want a prime from %d to %d, such as %d", ErrInvalidSize, size, MinSize, MaxSize, next)
	}
	return fmt.Errorf("%w %d: want a prime from %d to %d", ErrInvalidSize, size, MinSize, MaxSize)
}
