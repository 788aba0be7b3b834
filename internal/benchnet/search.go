package benchnet

import "fmt"

// MaxLossPct is the loss a rate may have and still count as lossless.
const MaxLossPct = 0.01

// Trial is one step of a search: it offers rate frames a second and returns
// the percentage of them lost.
type Trial func(rate float64) (lossPct float64, err error)

// SearchLossless finds the highest rate up to max at which trial loses at
// most MaxLossPct, RFC 2544 style: a trial at max, then a binary search
// between the highest lossless rate and the lowest lossy one tried so far,
// steps trials in all at most, stopping early when the two are within 2%
// of each other. It returns the highest lossless rate tried (0 if none
// was) and how many trials ran.
func SearchLossless(max float64, steps int, trial Trial) (float64, int, error) {
	if max <= 0 || steps < 1 {
		return 0, 0, fmt.Errorf("search up to %.0f pps in %d steps: nothing to search", max, steps)
	}
	lossless, lossy := 0.0, max
	rate := max
	for n := 1; ; n++ {
		loss, err := trial(rate)
		if err != nil {
			return lossless, n, fmt.Errorf("trial at %.0f pps: %w", rate, err)
		}
		if loss <= MaxLossPct {
			lossless = rate
		} else {
			lossy = rate
		}
		if rate == max && lossless == max || n == steps || lossy-lossless <= 0.02*lossy {
			return lossless, n, nil
		}
		rate = (lossless + lossy) / 2
	}
}
