"""Optional differential privacy for the tallies a site sends (off by default).

Mechanism: the geometric (discrete Laplace) mechanism on a comparison's histogram of item
verdicts (win, tie, loss, invalid). Two neighbouring validation sets differ in one item, which
moves one count from one cell to another: L1 sensitivity 2, so each cell gets noise with
P(k) proportional to exp(-epsilon * |k| / 2), which makes one comparison's report
epsilon-differentially private. The noisy counts are clamped at zero and, where they add up to
more items than the slice holds, the largest cells are trimmed; `items` is their sum
(post-processing costs no privacy).

Accounting: basic composition per run. Every comparison a site answers costs `epsilon`; once
the run's `budget` is spent the site refuses further comparisons (code PRIVACY_BUDGET). The
noisy tally is drawn once and stored, so asking again returns the same answer and costs
nothing: repeated questions cannot average the noise away.
"""

from __future__ import annotations

import math

import numpy as np

from common.tally import Tally


def discrete_laplace(
    rng: np.random.Generator, epsilon: float, sensitivity: int, size: int
) -> np.ndarray:
    """Noise with P(k) proportional to exp(-epsilon |k| / sensitivity), as a difference of two
    geometric variables."""
    p = 1.0 - math.exp(-epsilon / sensitivity)
    return rng.geometric(p, size) - rng.geometric(p, size)


def noisy_tally(tally: Tally, epsilon: float, span: int, rng: np.random.Generator) -> Tally:
    """The tally after the mechanism, valid for a slice of `span` items."""
    exact = (tally.win, tally.tie, tally.loss, tally.invalid)
    noisy = np.maximum(np.asarray(exact) + discrete_laplace(rng, epsilon, 2, 4), 0)
    while noisy.sum() > span:
        noisy[int(np.argmax(noisy))] -= 1
    win, tie, loss, invalid = (int(v) for v in noisy)
    return Tally(win, tie, loss, invalid, win + tie + loss + invalid)
