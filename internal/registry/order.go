package registry

import (
	"maps"
	"reflect"
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

// touched returns the names of the backends whose registration, override
// or health may differ between base and s, the state cloned from it: those
// written since the clone (cow.go). It cannot tell without a base, when a
// reload replaced the configuration file's backends, when services changed
// (a service's check is its backends'), or when every route is to be asked
// about again.
func (r *Registry) touched(base, s *state) ([]string, bool) {
	if base == nil || r.askRoutes || !sameMap(base.config, s.config) || !sameMap(base.services, s.services) {
		return nil, false
	}
	return s.dirty, true
}

// sameMap says whether a and b are the same map (not equal ones): the
// configuration file's map is shared between states until a reload
// replaces it.
func sameMap[M ~map[K]V, K comparable, V any](a, b M) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// patch re-derives only the named backends of s, in a copy of the list it
// was cloned with: a change of one backend among thousands then costs a
// copy of the list rather than a derivation of every backend.
func (r *Registry) patch(s *state, names []string) {
	if len(names) == 0 {
		return // s.list and s.noRoute, shared with the base, still hold
	}
	names = slices.Compact(slices.Sorted(slices.Values(names)))
	list := slices.Clone(s.list)
	noRoute := maps.Clone(s.noRoute)
	if noRoute == nil {
		noRoute = map[string]string{}
	}
	for _, name := range names {
		delete(noRoute, name)
		i, found := slices.BinarySearchFunc(list, name, func(b Backend, n string) int { return strings.Compare(b.Name, n) })
		reg, fromConfig, ok := s.lookup(name)
		switch {
		case !ok && found:
			list = slices.Delete(list, i, i+1)
		case ok:
			e := named{name: name, reg: reg, fromConfig: fromConfig}
			if found {
				e.prev = &list[i]
			}
			b := r.backend(s, e, noRoute)
			if found {
				list[i] = b
			} else {
				list = slices.Insert(list, i, b)
			}
		}
	}
	s.list, s.noRoute = list, noRoute
}

// stateEncoding returns the state file's encoding of next, or false when
// it is surely the one of cur: what encodeState reads (the run-time
// backends, the overrides, and the configuration file's names) is
// unchanged, and the file on disk is known. Encoding thousands of run-time
// backends at every change, health reports included, cost as much as the
// Maglev build. Keep it in step with encodeState.
func (r *Registry) stateEncoding(cur, next *state) ([]byte, bool) {
	if !r.diskUnknown && sameMap(cur.config, next.config) && sameMap(cur.services, next.services) &&
		sameMap(cur.runtime, next.runtime) && sameMap(cur.overrides, next.overrides) {
		return nil, false
	}
	return encodeState(next), true
}
