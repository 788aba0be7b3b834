package benchnet

import "fmt"

// MaxLossPct is the loss a rate may have and still count as lossless.
const MaxLossPct = 0.01

// MinOfferedShare is the share of the rate asked for that a trial must
// offer to have tested it: a paced generator falls a little behind after
// late wake-ups, and one that fell further did not.
const MinOfferedShare = 0.95

// shortRetries is how many more times a rate is tried when the generator
// fell short of it without loss: on a busy machine the generator's CPU is
// sometimes taken for a while, which says nothing about the forwarder.
const shortRetries = 2

// Trial is one step of a search: it tries to offer rate frames a second and
// returns the rate it offered (a paced generator falls behind when its CPU
// is taken) and the percentage of that lost.
type Trial func(rate float64) (offered, lossPct float64, err error)

// SearchLossless finds the highest rate up to top at which trial loses at
// most MaxLossPct, RFC 2544 style: a trial at top, then a binary search
// between the highest rate shown lossless and the lowest shown lossy, at
// most steps trials, stopping early when the two are within 2% of each
// other. A trial shows the rate it offered, not the one asked for. A rate
// below top whose generator fell behind (below MinOfferedShare of it)
// without loss is tried up to shortRetries more times; if it still falls
// behind, the trial shows that its lower rate was lossless and leaves the
// rate asked for as the upper bound, and the search goes on between them. If the trial at
// top loses nothing, that is the result, whatever the generator managed:
// top is meant to be what it can offer unpaced. It returns the highest rate
// shown lossless (0 if none was) and how many rates it tried.
func SearchLossless(top float64, steps int, trial Trial) (float64, int, error) {
	if top <= 0 || steps < 1 {
		return 0, 0, fmt.Errorf("search up to %.0f pps in %d steps: nothing to search", top, steps)
	}
	lossless, lossy := 0.0, top
	rate := top
	for n := 1; ; n++ {
		var offered, loss float64
		for try := 0; try == 0 || rate < top && try <= shortRetries && loss <= MaxLossPct && offered < MinOfferedShare*rate; try++ {
			var err error
			if offered, loss, err = trial(rate); err != nil {
				return lossless, n, fmt.Errorf("trial at %.0f pps: %w", rate, err)
			}
		}
		if loss > MaxLossPct {
			lossy = min(lossy, offered)
		} else {
			lossless = max(lossless, offered)
			if offered < MinOfferedShare*rate {
				lossy = min(lossy, rate)
			}
		}
		if n == 1 && loss <= MaxLossPct || lossless >= lossy || n == steps || lossy-lossless <= 0.02*lossy {
			return lossless, n, nil
		}
		rate = (lossless + lossy) / 2
	}
}
