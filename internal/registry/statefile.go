package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/caplance/caplance/internal/atomicfile"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/quote"
)

// stateVersion is the version of the state file this code writes and reads.
const stateVersion = 1

type stateFile struct {
	Version   int                     `json:"version"`
	Backends  []fileBackend           `json:"backends"`
	Overrides map[string]fileOverride `json:"overrides"`
}

type fileBackend struct {
	Name    string  `json:"name"`
	Address string  `json:"address"`
	Weight  *uint32 `json:"weight"`
	Check   string  `json:"check,omitempty"`
}

type fileOverride struct {
	Weight  *uint32 `json:"weight,omitempty"`
	Drained bool    `json:"drained,omitempty"`
}

// emptyEncoding is the state file of a registry with nothing to keep; a
// missing file means the same, so it is not written.
var emptyEncoding = encodeState(newState())

// encodeState is the state file for s: its persistent run-time backends and
// the overrides of the backends that survive a restart. The encoding is
// canonical, so equal contents give equal bytes.
func encodeState(s *state) []byte {
	f := stateFile{Version: stateVersion, Backends: []fileBackend{}, Overrides: map[string]fileOverride{}}
	for _, name := range slices.Sorted(maps.Keys(s.runtime)) {
		reg := s.runtime[name]
		if !reg.persistent {
			continue
		}
		f.Backends = append(f.Backends, fileBackend{Name: name, Address: reg.address.String(), Weight: &reg.weight, Check: reg.check})
	}
	for name, o := range s.overrides {
		if reg, fromConfig, ok := s.lookup(name); !ok || !(fromConfig || reg.persistent) || o.empty() {
			continue
		}
		fo := fileOverride{Drained: o.drained}
		if o.hasWeight {
			fo.Weight = &o.weight
		}
		f.Overrides[name] = fo
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("registry: encoding the state file: %v", err)) // plain data: cannot happen
	}
	return append(b, '\n')
}

// readStateFile reads and validates the state file. A missing file is an
// empty one (and onDisk is nil). onDisk is the canonical encoding of what
// the file holds.
func readStateFile(path string) (f *stateFile, onDisk []byte, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &stateFile{}, nil, nil
	}
	if err != nil {
		return nil, nil, failed(err, "state file %s: %v", path, err)
	}
	f, err = decodeStateFile(data)
	if err != nil {
		return nil, nil, failed(err, "state file %s: %v: fix it, or move it away to start without the run-time backends and overrides it holds", path, err)
	}
	s := newState()
	for _, b := range f.Backends {
		a, _ := config.ParseAddress(b.Address)
		s.runtime[b.Name] = registration{address: a, weight: *b.Weight, check: b.Check, persistent: true}
	}
	for name, o := range f.Overrides {
		s.overrides[name] = toOverride(o)
		if _, ok := s.runtime[name]; !ok {
			// An override of a configuration file backend: stand in for it
			// so that the encoding keeps the override.
			s.config[name] = registration{}
		}
	}
	return f, encodeState(s), nil
}

func toOverride(o fileOverride) override {
	out := override{drained: o.Drained}
	if o.Weight != nil {
		out.weight, out.hasWeight = *o.Weight, true
	}
	return out
}

// decodeStateFile decodes strictly: unknown fields, trailing data, a
// version other than stateVersion and invalid values are errors.
func decodeStateFile(data []byte) (*stateFile, error) {
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	switch {
	case v.Version == nil:
		return nil, fmt.Errorf("no \"version\" field")
	case *v.Version != stateVersion:
		return nil, fmt.Errorf("version %d is not supported (this caplanced reads version %d; was the file written by a newer one?)", *v.Version, stateVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f stateFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a valid state file: %v", err)
	}
	var problems []string
	set := config.NewBackendSet(nil) // a VIP among them is dropped with a warning (restore)
	for i, b := range f.Backends {
		place := fmt.Sprintf("backends[%d] %s", i, quote.Q(b.Name))
		spec := config.BackendSpec{Name: b.Name, Address: b.Address, Check: b.Check}
		if b.Weight == nil {
			problems = append(problems, fmt.Sprintf("%s: weight: missing", place))
		} else {
			w := int64(*b.Weight)
			spec.Weight = &w
		}
		_, bad := set.Add(spec)
		for _, p := range bad {
			problems = append(problems, fmt.Sprintf("%s: %v", place, p))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(f.Overrides)) {
		place := fmt.Sprintf("overrides %s", quote.Q(name))
		if err := config.CheckBackendName(name); err != nil {
			problems = append(problems, fmt.Sprintf("%s: name: %v", place, err))
		}
		if w := f.Overrides[name].Weight; w != nil {
			if err := config.CheckWeight(int64(*w)); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", place, err))
			}
		}
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	return &f, nil
}

// restore puts the state file's run-time backends and overrides into s,
// which holds the configuration file's backends, and drops (with a
// warning) what no longer fits.
func (r *Registry) restore(s *state, f *stateFile) []string {
	for _, b := range f.Backends {
		a, _ := config.ParseAddress(b.Address)
		s.runtime[b.Name] = registration{address: a, weight: *b.Weight, check: b.Check, persistent: true}
	}
	warnings := r.dropConflicts(s)
	for name, o := range f.Overrides {
		if o := toOverride(o); !o.empty() {
			s.overrides[name] = o
		}
	}
	warnings = append(warnings, dropOrphans(s)...)
	for i, w := range warnings {
		warnings[i] = fmt.Sprintf("state file %s: %s", r.statePath, w)
	}
	return warnings
}

// writeFile replaces path with data atomically and durably (package
// atomicfile). renamed says whether path was replaced, even if the final
// fsync of the directory failed.
func writeFile(path string, data []byte) (renamed bool, err error) {
	// Everyone may read the backend set over D-Bus anyway.
	if err := atomicfile.Replace(path, data, 0o644); err != nil {
		return false, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return true, err
	}
	return true, nil
}

func writeFileAtomic(path string, data []byte) error {
	_, err := writeFile(path, data)
	return err
}

// removeFile removes path durably.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(path)
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable. A variable, so that a
// test can make it fail.
var syncDir = atomicfile.SyncDir

// CheckStateFile reads and validates the state file at path as Open will,
// so that the daemon can refuse a bad one before it touches the host. A
// missing file is fine.
func CheckStateFile(path string) error {
	_, _, err := readStateFile(path)
	return err
}
