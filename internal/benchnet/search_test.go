package benchnet

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSearchLossless runs the search against forwarders that lose nothing up
// to a capacity and a share of what is above it.
func TestSearchLossless(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity float64
		// want is the range the found rate must be in, and the trials.
		lo, hi float64
		trials int
	}{
		{"lossless at the maximum", 200_000, 100_000, 100_000, 1},
		{"capacity half way", 50_000, 49_000, 50_000, 7},
		{"capacity low", 10_000, 9_300, 10_000, 7},
		{"nothing lossless", 100, 0, 0, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tried []float64
			rate, trials, err := SearchLossless(100_000, 7, func(rate float64) (float64, float64, error) {
				tried = append(tried, rate)
				if rate <= tc.capacity {
					return rate, 0, nil
				}
				return rate, 100 * (rate - tc.capacity) / rate, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if rate < tc.lo || rate > tc.hi || trials != tc.trials || len(tried) != trials {
				t.Errorf("rate %.0f after %d trials (tried %v), want %.0f–%.0f after %d", rate, trials, tried, tc.lo, tc.hi, tc.trials)
			}
		})
	}
}

// TestSearchLosslessStopsWithinTwoPercent: the search stops once the
// lossless and the lossy rate are within 2% of each other.
func TestSearchLosslessStopsWithinTwoPercent(t *testing.T) {
	var tried []float64
	rate, _, err := SearchLossless(1000, 20, func(rate float64) (float64, float64, error) {
		tried = append(tried, rate)
		if rate <= 700 {
			return rate, 0, nil
		}
		return rate, 1, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1000, 500, 750, 625, 687.5, 718.75, 703.125, 695.3125}
	if diff := cmp.Diff(want, tried); diff != "" || rate != 695.3125 {
		t.Errorf("found %v; tried (-want +got):\n%s", rate, diff)
	}
}

// TestSearchLosslessTrialError: a failed trial ends the search with its
// error and the rate found so far.
func TestSearchLosslessTrialError(t *testing.T) {
	broken := errors.New("sink gone")
	rate, trials, err := SearchLossless(1000, 7, func(rate float64) (float64, float64, error) {
		if rate < 1000 {
			return 0, 0, broken
		}
		return rate, 50, nil
	})
	if !errors.Is(err, broken) || rate != 0 || trials != 2 {
		t.Errorf("rate %v trials %d err %v, want 0, 2, %v", rate, trials, err, broken)
	}
}

// TestSearchLosslessGeneratorShort: a trial whose generator offered less
// than MinOfferedShare of the rate did not show that rate lossless, even if
// nothing it offered was lost.
func TestSearchLosslessGeneratorShort(t *testing.T) {
	rate, _, err := SearchLossless(100_000, 7, func(rate float64) (float64, float64, error) {
		return min(rate, 60_000), 0, nil // a generator that tops out at 60k
	})
	if err != nil {
		t.Fatal(err)
	}
	if rate < 58_000 || rate > 63_000 {
		t.Errorf("found %.0f, want about the generator's 60,000", rate)
	}
}

// TestSearchLosslessRetriesShortTrials: a rate whose generator fell short
// once without loss is tried again, and counts if the retry reaches it.
func TestSearchLosslessRetriesShortTrials(t *testing.T) {
	var tried []float64
	rate, trials, err := SearchLossless(1000, 7, func(rate float64) (float64, float64, error) {
		tried = append(tried, rate)
		if len(tried) == 1 {
			return rate / 2, 0, nil // starved once
		}
		return rate, 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]float64{1000, 1000}, tried); diff != "" || rate != 1000 || trials != 1 {
		t.Errorf("found %v after %d rates; tried (-want +got):\n%s", rate, trials, diff)
	}
}
