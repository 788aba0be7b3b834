package benchnet

import "fmt"

// MaxLossPct is the loss a rate may have and still count as lossless.
const MaxLossPct = 0.01

// MinOfferedShare is the share of the rate asked for that a trial must
// have offered to count: a paced generator falls a little behind after late
// wake-ups, and one that fell further did not test the rate.
const MinOfferedShare = 0.95

// shortRetries is how many more times a rate is tried when the generator
// fell short of it without loss: on a busy machine the generator's CPU is
// sometimes taken for a while, which says nothing about the forwarder.
const shortRetries = 2

// Trial is one step of a search: it tries to offer rate frames a second and
// returns the rate it offered and the percentage of that lost.
type Trial func(rate float64) (offered, lossPct float64, err error)

// SearchLossless finds the highest rate up to max at which trial loses at
// most MaxLossPct, having offered at least MinOfferedShare of it (a rate
// whose trials fell short shortRetries+1 times without loss counts as not
// lossless: it was not shown to be), RFC 2544 style: a trial at max, then a binary search
// between the highest lossless rate and the lowest lossy one tried so far,
// steps trials in all at most, stopping early when the two are within 2%
// of each other. It returns the highest lossless rate tried (0 if none
// was) and how many rates it tried.
func SearchLossless(max float64, steps int, trial Trial) (float64, int, error) {
	if max <= 0 || steps < 1 {
		return 0, 0, fmt.Errorf("search up to %.0f pps in %d steps: nothing to search", max, steps)
	}
	lossless, lossy := 0.0, max
	rate := max
	for n := 1; ; n++ {
		var offered, loss float64
		for try := 0; try == 0 || try <= shortRetries && loss <= MaxLossPct && offered < MinOfferedShare*rate; try++ {
			var err error
			if offered, loss, err = trial(rate); err != nil {
				return lossless, n, fmt.Errorf("trial at %.0f pps: %w", rate, err)
			}
		}
		if loss <= MaxLossPct && offered >= MinOfferedShare*rate {
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
