package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"

	"github.com/caplance/caplance/internal/quote"
)

// Option configures Open.
type Option func(*Registry)

// HealthFile makes the registry keep caplance-healthd's last report of each
// backend reported down in the file at path (caplanced puts it in its
// runtime directory), so that such a backend stays down across a restart of
// caplanced until caplance-healthd reports again, instead of returning to
// rotation as unknown. Reports up are not kept: after a restart such a
// backend is unknown until the next report, which, like up, is in rotation.
// So the file, and the cost of rewriting it, grow with the backends that
// are down, not with all of them: at 4000 backends reported up, keeping
// every report made each ReportHealth cost 3.5 Maglev builds
// (BenchmarkChange).
//
// The file is a cache, not state: Open takes from it only the reports whose
// backend still exists with the same address and check (a report is about
// an address and a check, as during a run), and drops the others: those of
// removed backends silently, those of changed ones with a warning. A file
// that cannot be read or decoded is ignored with a warning. The file is
// rewritten (atomically) with every change of a report; a failed write
// does not refuse the change, which the data path already has: it is
// logged on log (nil: discarded) and retried at the next change.
//
// JSON, canonical:
//
//	{
//	  "version": 1,
//	  "backends": {
//	    "web1": {"address": "10.0.1.11", "check": "tcp://:80", "health": "down", "detail": "connection refused after 3 failures"}
//	  }
//	}
func HealthFile(path string, log *slog.Logger) Option {
	return func(r *Registry) {
		r.healthPath = path
		r.healthLog = log
		if r.healthLog == nil {
			r.healthLog = slog.New(slog.DiscardHandler)
		}
	}
}

// healthVersion is the version of the health file this code writes and
// reads.
const healthVersion = 1

type healthFile struct {
	Version  int                     `json:"version"`
	Backends map[string]healthRecord `json:"backends"`
}

type healthRecord struct {
	Address string `json:"address"`
	Check   string `json:"check,omitempty"`
	Health  Health `json:"health"`
	Detail  string `json:"detail,omitempty"`
}

// encodeHealth is the health file for s: every backend reported down, with
// the address and check the report is about.
func encodeHealth(s *state) []byte {
	f := healthFile{Version: healthVersion, Backends: map[string]healthRecord{}}
	for name, h := range s.health {
		if h.health != HealthDown {
			continue
		}
		reg, _, _ := s.lookup(name)
		f.Backends[name] = healthRecord{Address: reg.address.String(), Check: s.check(reg), Health: h.health, Detail: h.detail}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("registry: encoding the health file: %v", err)) // plain data: cannot happen
	}
	return append(b, '\n')
}

// restoreHealth puts the health file's reports into s, which holds every
// backend, as HealthFile says, and returns the warnings.
func (r *Registry) restoreHealth(s *state) []string {
	if r.healthPath == "" {
		return nil
	}
	data, err := os.ReadFile(r.healthPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var f healthFile
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err = dec.Decode(&f)
		if err == nil && f.Version != healthVersion {
			err = fmt.Errorf("version %d, this caplanced reads %d", f.Version, healthVersion)
		}
	}
	if err != nil {
		return []string{fmt.Sprintf("health file %s ignored (every backend's health is unknown until caplance-healthd reports): %v", r.healthPath, err)}
	}
	var warnings []string
	for _, name := range slices.Sorted(maps.Keys(f.Backends)) {
		rec := f.Backends[name]
		reg, _, ok := s.lookup(name)
		switch {
		case !ok:
			// Removed: its report goes with it, as during a run.
		case rec.Health != HealthUp && rec.Health != HealthDown:
			warnings = append(warnings, fmt.Sprintf("health file %s: backend %s: health %s is neither up nor down: dropped", r.healthPath, quote.Q(name), quote.Q(string(rec.Health))))
		case rec.Address != reg.address.String() || rec.Check != s.check(reg):
			warnings = append(warnings, fmt.Sprintf("health file %s: backend %s was reported %s at %s with check %s; its address or check changed since: health unknown until caplance-healthd reports", r.healthPath, quote.Q(name), rec.Health, quote.Q(rec.Address), quote.Q(rec.Check)))
		default:
			s.health[name] = healthReport{health: rec.Health, detail: rec.Detail}
		}
	}
	return warnings
}

// writeHealth rewrites the health file when the reports of s, which
// follows prev (nil at Open), differ from what it holds. A change that left
// the reports alone still shares prev's map (cow.go) and costs nothing. A
// failure is logged and retried at the next change.
func (r *Registry) writeHealth(prev, s *state) {
	if r.healthPath == "" || (r.healthOnDisk != nil && prev != nil && !s.own.health) {
		return
	}
	enc := encodeHealth(s)
	if bytes.Equal(enc, r.healthOnDisk) {
		return
	}
	if err := writeFileAtomic(r.healthPath, enc); err != nil {
		r.healthOnDisk = nil
		r.healthLog.Warn("writing the health file; a restart of caplanced would forget the last health reports", "file", r.healthPath, "err", err)
		return
	}
	r.healthOnDisk = enc
}
