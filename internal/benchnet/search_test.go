package benchnet

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSearchLossless runs the search against forwarders that lose nothing up
// to a capacity and a share of what is above it, and generators that offer
// what they are asked or top out.
func TestSearchLossless(t *testing.T) {
	for _, tc := range []struct {
		name                string
		capacity, generator float64
		// The range the found rate must be in, and the trials.
		lo, hi float64
		trials int
	}{
		{"lossless at the maximum", 200_000, 1e9, 100_000, 100_000, 1},
		{"capacity half way", 50_000, 1e9, 49_000, 50_000, 7},
		{"capacity low", 10_000, 1e9, 9_300, 10_000, 7},
		{"nothing lossless", 100, 1e9, 0, 0, 7},
		{"generator tops out below the capacity", 90_000, 60_000, 60_000, 60_000, 1},
		{"generator tops out above the capacity", 50_000, 80_000, 49_000, 50_000, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tried []float64
			rate, trials, err := SearchLossless(100_000, 7, func(rate float64) (float64, float64, error) {
				tried = append(tried, rate)
				offered := min(rate, tc.generator)
				if offered <= tc.capacity {
					return offered, 0, nil
				}
				return offered, 100 * (offered - tc.capacity) / offered, nil
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

// TestSearchLosslessStarvedTrial: a trial whose generator fell behind once
// is tried again.
func TestSearchLosslessStarvedTrial(t *testing.T) {
	var tried []float64
	rate, _, err := SearchLossless(1000, 7, func(rate float64) (float64, float64, error) {
		tried = append(tried, rate)
		switch {
		case rate > 800:
			return rate, 5, nil
		case len(tried) == 2:
			return rate / 2, 0, nil // starved: offered 250 of 500
		}
		return rate, 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{1000, 500, 500, 750, 875, 812.5, 781.25, 796.875}
	if diff := cmp.Diff(want, tried); diff != "" || rate != 796.875 {
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

// TestSearchLosslessGeneratorCeiling: a paced rate the generator keeps
// falling short of (three trials) bounds the search, which ends at what the
// generator offers.
func TestSearchLosslessGeneratorCeiling(t *testing.T) {
	var tried []float64
	rate, trials, err := SearchLossless(100_000, 7, func(rate float64) (float64, float64, error) {
		tried = append(tried, rate)
		if rate == 100_000 {
			return rate, 30, nil // the forwarder's capacity is 70k
		}
		return min(rate, 60_000), 0, nil // paced, the generator tops out at 60k
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{100_000, 50_000, 75_000, 75_000, 75_000, 67_500, 67_500, 67_500,
		63_750, 63_750, 63_750, 61_875, 61_875}
	if diff := cmp.Diff(want, tried); diff != "" || rate != 60_000 || trials != 7 {
		t.Errorf("found %.0f after %d rates; tried (-want +got):\n%s", rate, trials, diff)
	}
}
