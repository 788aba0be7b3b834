package registry

import (
	"slices"
	"strings"
)

// named is a backend's registration with its name, and its derived
// backend in the list the state was cloned from (nil when it is new).
type named struct {
	name       string
	reg        registration
	fromConfig bool
	prev       *Backend
}

// sortedNames returns s's backends in byte order of their names. It starts
// from the order of s.list, which is still the list of the state s was
// cloned from: names that stay keep their place and only new names are
// sorted and merged in. Sorting every backend at every change cost as much
// as half a Maglev build at 4000 backends (docs/benchmarks.md).
//
// The result is valid until the next call with the same scratch, whose
// backing array it reuses: the derivation's temporary list of thousands of
// entries is then not garbage at every change.
func sortedNames(s *state, scratch []named) []named {
	total := len(s.config) + len(s.runtime)
	out := scratch[:0]
	fromConfig := 0 // how many of out are in s.config
	for i := range s.list {
		b := &s.list[i]
		if reg, inConfig, ok := s.lookup(b.Name); ok {
			out = append(out, named{b.Name, reg, inConfig, b})
			if inConfig {
				fromConfig++
			}
		}
	}
	if len(out) == total {
		return out
	}
	// Look for the new names only in the maps that have some.
	var added []named
	for _, m := range []struct {
		regs       map[string]registration
		fromConfig bool
		kept       int
	}{{s.config, true, fromConfig}, {s.runtime, false, len(out) - fromConfig}} {
		if len(m.regs) == m.kept {
			continue
		}
		for name, reg := range m.regs {
			if _, found := s.get(name); !found {
				added = append(added, named{name, reg, m.fromConfig, nil})
			}
		}
	}
	slices.SortFunc(added, func(a, b named) int { return strings.Compare(a.name, b.name) })
	// Merge from the back, in place.
	i, j := len(out)-1, len(added)-1
	out = slices.Grow(out, len(added))[:len(out)+len(added)]
	for w := len(out) - 1; j >= 0; w-- {
		if i >= 0 && out[i].name > added[j].name {
			out[w] = out[i]
			i--
		} else {
			out[w] = added[j]
			j--
		}
	}
	return out
}
