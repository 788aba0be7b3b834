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
	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
)

// stateVersion is the version of the state file this code writes. It reads
// version 1 too, which had no services: its backends are of the service
// "default", as a configuration file of that time is (package config).
const stateVersion = 2

type stateFile struct {
	Version   int                     `json:"version"`
	Services  []fileService           `json:"services,omitempty"`
	Backends  []fileBackend           `json:"backends"`
	Overrides map[string]fileOverride `json:"overrides"`
}

// fileService is a run-time service. Its port list is every VIP's: only
// the configuration file's single-pool form gives VIPs lists of their own.
type fileService struct {
	Name      string   `json:"name"`
	VIPs      []string `json:"vips"`
	Ports     string   `json:"ports"`
	Protocols string   `json:"protocols"`
	Hash      string   `json:"hash"`
	TableSize int      `json:"table_size"`
	Check     string   `json:"check,omitempty"`
}

type fileBackend struct {
	Name    string  `json:"name"`
	Service string  `json:"service"`
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

// encodeState is the state file for s: its persistent run-time services and
// backends and the overrides of the backends that survive a restart. The
// encoding is canonical, so equal contents give equal bytes.
func encodeState(s *state) []byte {
	f := stateFile{Version: stateVersion, Backends: []fileBackend{}, Overrides: map[string]fileOverride{}}
	for _, name := range slices.Sorted(maps.Keys(s.services)) {
		if sr := s.services[name]; !sr.fromConfig && sr.persistent {
			f.Services = append(f.Services, toFileService(sr.svc))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.runtime)) {
		reg := s.runtime[name]
		if !reg.persistent || !s.persistentService(reg.service) {
			continue
		}
		f.Backends = append(f.Backends, fileBackend{Name: name, Service: reg.service, Address: reg.address.String(), Weight: &reg.weight, Check: reg.check})
	}
	for name, o := range s.overrides {
		if reg, fromConfig, ok := s.lookup(name); !ok || !(fromConfig || reg.persistent && s.persistentService(reg.service)) || o.empty() {
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

// persistentService says whether the service of that name survives a
// restart: a backend of a service that does not goes with it.
func (s *state) persistentService(name string) bool {
	sr, ok := s.services[name]
	return ok && (sr.fromConfig || sr.persistent)
}

func toFileService(svc model.Service) fileService {
	f := fileService{Name: svc.Name, VIPs: []string{}, Ports: "all", Protocols: svc.Protocols.String(), Hash: svc.Hash.String(),
		TableSize: svc.TableSize, Check: svc.Check}
	for _, v := range svc.VIPs {
		f.VIPs = append(f.VIPs, v.Addr.String())
	}
	if len(svc.VIPs) > 0 {
		f.Ports = model.FormatPorts(svc.VIPs[0].Ports)
	}
	return f
}

// fromFileService validates a service of the state file with the
// configuration file's rules (config.CheckService).
func fromFileService(f fileService) (model.Service, error) {
	n := int64(f.TableSize)
	spec := config.ServiceSpec{Name: f.Name, VIPs: f.VIPs, Ports: f.Ports, Protocols: []string{f.Protocols}, Hash: f.Hash,
		TableSize: &n, Check: f.Check}
	if spec.VIPs == nil {
		spec.VIPs = []string{} // "at least one", not "unchanged"
	}
	svc, problems := config.CheckService(spec, config.ServiceDefaults(maglev.DefaultSize))
	if len(problems) > 0 {
		msgs := make([]string, len(problems))
		for i, p := range problems {
			msgs[i] = p.Error()
		}
		return svc, errors.New(strings.Join(msgs, "; "))
	}
	return svc, nil
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
	for _, fs := range f.Services {
		svc, _ := fromFileService(fs)
		s.services[svc.Name] = serviceReg{svc: svc, persistent: true}
	}
	for _, b := range f.Backends {
		a, _ := config.ParseAddress(b.Address)
		s.runtime[b.Name] = registration{service: b.Service, address: a, weight: *b.Weight, check: b.Check, persistent: true}
		if _, ok := s.services[b.Service]; !ok {
			// A backend of a configuration file service: stand in for
			// the service so that the encoding keeps the backend.
			s.services[b.Service] = serviceReg{fromConfig: true}
		}
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
	case *v.Version != stateVersion && *v.Version != 1:
		return nil, fmt.Errorf("version %d is not supported (this caplanced reads versions 1 and %d; was the file written by a newer one?)", *v.Version, stateVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f stateFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a valid state file: %v", err)
	}
	if *v.Version == 1 && len(f.Services) > 0 {
		return nil, fmt.Errorf("version 1 has no \"services\"")
	}
	var problems []string
	services := map[string]bool{}
	for i, fs := range f.Services {
		place := fmt.Sprintf("services[%d] %s", i, quote.Q(fs.Name))
		if _, err := fromFileService(fs); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", place, err))
		}
		if services[fs.Name] {
			problems = append(problems, fmt.Sprintf("%s: listed twice", place))
		}
		services[fs.Name] = true
	}
	// A VIP among the addresses is dropped with a warning (restore).
	set := config.NewBackendSet(nil)
	for i := range f.Backends {
		b := &f.Backends[i]
		place := fmt.Sprintf("backends[%d] %s", i, quote.Q(b.Name))
		if *v.Version == 1 {
			b.Service = config.DefaultService
		}
		if err := config.CheckServiceName(b.Service); err != nil {
			problems = append(problems, fmt.Sprintf("%s: service: %v", place, err))
		}
		spec := config.BackendSpec{Service: b.Service, Name: b.Name, Address: b.Address, Check: b.Check}
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
	var warnings []string
	if len(f.Services) > 0 {
		svcs := maps.Clone(s.services)
		for _, fs := range f.Services {
			if _, ok := s.services[fs.Name]; ok {
				warnings = append(warnings, fmt.Sprintf("run-time service %s dropped: the configuration file defines a service of that name, which wins", quote.Q(fs.Name)))
				continue
			}
			svc, _ := fromFileService(fs)
			svcs[svc.Name] = serviceReg{svc: svc, persistent: true}
		}
		s.services = svcs
	}
	for _, b := range f.Backends {
		a, _ := config.ParseAddress(b.Address)
		s.runtime[b.Name] = registration{service: b.Service, address: a, weight: *b.Weight, check: b.Check, persistent: true}
	}
	warnings = append(warnings, r.dropConflicts(s)...)
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
