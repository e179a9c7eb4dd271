"""Small, dependency-free statistics for evaluation and A/B reports.

Only the standard library, so the admin console and the tests need nothing extra. Other parts of
the product add their tests (two-proportion tests, power) here beside the interval they build on.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal: a two-sided 95 % interval


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion `successes / n`.

    Chosen over the textbook (Wald) interval because evaluation rates sit near 0 or 1 with small
    n, where Wald collapses to a zero-width interval (0/10 -> [0, 0]) or leaves [0, 1]; Wilson
    stays inside [0, 1] and keeps close to its nominal coverage (Newcombe 1998, method 3).

        centre  = (p + z²/2n) / (1 + z²/n)
        halfwid = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)

    `z=1.96` gives the usual 95 % interval. With no observations nothing is known: (0.0, 1.0).
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp float noise: at p = 0 or 1 the bound is exactly 0 or 1 in exact arithmetic.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
