package registry

import "maps"

// Copy-on-write of a state's run-time, override and health maps: clone
// shares them with the state it was cloned from, and the first write
// through one of these helpers copies the map. The helpers also record the
// names they write (dirty), so that derive and settle look only at those.
// A change of one backend among thousands then neither copies nor walks the
// maps of the others: at 4000 backends, each reported up by
// caplance-healthd, that was about half a Maglev build per change
// (docs/benchmarks.md).

// owned says which maps a state may write in place: those it made or has
// copied.
type owned struct{ runtime, overrides, health bool }

func (s *state) setRuntime(name string, reg registration) {
	own(&s.runtime, &s.own.runtime)[name] = reg
	s.dirty = append(s.dirty, name)
}

func (s *state) deleteRuntime(name string) {
	if _, ok := s.runtime[name]; ok {
		delete(own(&s.runtime, &s.own.runtime), name)
		s.dirty = append(s.dirty, name)
	}
}

func (s *state) putOverride(name string, o override) {
	own(&s.overrides, &s.own.overrides)[name] = o
	s.dirty = append(s.dirty, name)
}

func (s *state) deleteOverride(name string) {
	if _, ok := s.overrides[name]; ok {
		delete(own(&s.overrides, &s.own.overrides), name)
		s.dirty = append(s.dirty, name)
	}
}

func (s *state) setHealth(name string, h healthReport) {
	own(&s.health, &s.own.health)[name] = h
	s.dirty = append(s.dirty, name)
}

func (s *state) deleteHealth(name string) {
	if _, ok := s.health[name]; ok {
		delete(own(&s.health, &s.own.health), name)
		s.dirty = append(s.dirty, name)
	}
}

// own returns *m, first copied unless *owned says it is the state's own.
func own[V any](m *map[string]V, owned *bool) map[string]V {
	if !*owned {
		*m = maps.Clone(*m)
		if *m == nil {
			*m = map[string]V{}
		}
		*owned = true
	}
	return *m
}

// settle drops from next, the state changed from cur, what no longer
// applies: the overrides and health of backends that are gone, and the
// health of backends whose address or check changed (a health result is
// about an address and a check: it does not carry over to new ones). Only
// a reload or a change of services can change many backends at once (their
// service's check is theirs when they have none); otherwise only the names
// written since the clone can have gone or changed.
func settle(cur, next *state) {
	names := next.dirty
	if !sameMap(cur.config, next.config) || !sameMap(cur.services, next.services) {
		dropOrphans(next)
		names = nil
		for name := range next.health {
			names = append(names, name)
		}
	}
	for _, name := range names {
		n, _, ok := next.lookup(name)
		if !ok {
			next.deleteOverride(name)
			next.deleteHealth(name)
			continue
		}
		if o, _, _ := cur.lookup(name); o.address != n.address || cur.check(o) != next.check(n) {
			next.deleteHealth(name)
		}
	}
}
