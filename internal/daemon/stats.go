package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/caplance/caplance/internal/atomicfile"
	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/receiver"
)

// Stats is the content of the stats file.
type Stats struct {
	Written  time.Time       `json:"written"`
	Balancer *balancer.Stats `json:"balancer,omitempty"`
	Receiver *receiver.Stats `json:"receiver,omitempty"`
}

func (r *running) writeStatsEvery(ctx context.Context, dir string) {
	tick := time.NewTicker(StatsInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			r.writeStats(dir)
		}
	}
}

// writeStats replaces the stats file atomically, so a reader never sees a
// half-written one.
func (r *running) writeStats(dir string) {
	st := Stats{Written: time.Now().UTC()}
	if r.bal != nil {
		s := r.bal.Stats()
		st.Balancer = &s
	}
	if r.rcv != nil {
		s := r.rcv.Stats()
		st.Receiver = &s
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		r.log.Error("encoding stats", "err", err)
		return
	}
	// Readable by monitoring agents (docs/security.md).
	if err := atomicfile.Write(filepath.Join(dir, StatsFile), append(data, '\n'), 0o644); err != nil {
		r.log.Warn("writing stats", "err", err)
	}
}

// ReadStats reads the stats file a running caplanced writes in dir.
func ReadStats(dir string) (Stats, error) {
	var st Stats
	data, err := os.ReadFile(filepath.Join(dir, StatsFile))
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(data, &st)
	return st, err
}

// removeStats removes the stats file (and what a crash inside a write left
// of one): no counters of a daemon that is not running.
func removeStats(dir string) error {
	path := filepath.Join(dir, StatsFile)
	return errors.Join(atomicfile.Remove(path), atomicfile.RemoveStale(path))
}
