package e2e

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/daemon"
)

// The counters of a killed caplanced are not left for a monitoring agent to
// read as live: --cleanup removes stats.json, and what a crash inside its
// rewrite would leave.
func TestCleanupRemovesStaleStats(t *testing.T) {
	tb := newTestbed(t)
	lb := tb.Balancer
	if _, err := lb.Stats(time.Now()); err != nil {
		t.Fatal(err)
	}
	stats := filepath.Join(lb.RuntimeDir, daemon.StatsFile)
	// Monitoring agents read it (docs/security.md).
	fi, err := os.Stat(stats)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("stats file mode %v, want 0644", fi.Mode().Perm())
	}
	if err := lb.Kill(); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(lb.RuntimeDir, "."+daemon.StatsFile+".tmp-123")
	if err := os.WriteFile(tmp, []byte(`{"writ`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stats); err != nil {
		t.Fatalf("no stats file after kill -9: %v", err)
	}
	if out, code := runCaplanced(t, tb.LB, "--cleanup", "--runtime-dir", lb.RuntimeDir); code != 0 {
		t.Fatalf("--cleanup: exit code %d\n%s", code, out)
	}
	for _, f := range []string{stats, tmp} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after --cleanup: %v, want it gone", f, err)
		}
	}
}
