// Package metricstest checks Prometheus scrapes in tests: promtool's lint
// (promtool check metrics, from Debian's prometheus package, which
// .ci/setup installs) and the samples of a scrape in the text format. It
// has no state and touches nothing but the promtool it runs.
package metricstest

import (
	"bytes"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Promtool returns promtool's path, failing the test when it is missing:
// CI installs it, so a missing one is a broken setup, not a reason to skip.
func Promtool(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian package prometheus, installed by .ci/setup): %v", err)
	}
	return path
}

// Check fails the test when promtool check metrics has anything to say
// about scrape, a scrape in the text format.
func Check(t testing.TB, scrape string) {
	t.Helper()
	cmd := exec.Command(Promtool(t), "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// Samples maps each sample of a scrape in the text format,
// `name{label="value",…}` as written, to its value.
func Samples(t testing.TB, scrape string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for line := range strings.Lines(scrape) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("sample %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

var sampleName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)

// Names returns the set of metric names of the samples of scrape
// (a histogram's as its _bucket, _sum and _count).
func Names(t testing.TB, scrape string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for s := range Samples(t, scrape) {
		names[sampleName.FindString(s)] = true
	}
	return names
}
