"""The binary KL divergence and its upper inverse (all in nats, float64).

``kl_inverse(q, c)`` is the largest ``p`` in ``[q, 1]`` with ``kl(q || p) <= c``: the
test-error bound of a PAC-Bayes-kl bound whose right-hand side is ``c`` nats and whose
empirical error is ``q``.
"""

from __future__ import annotations

import math

from genbound.errors import GenboundError

__all__ = ["binary_kl", "kl_inverse"]


def _xlogy_ratio(x: float, y: float) -> float:
    """x ln(x / y) with 0 ln(0 / y) = 0 and x ln(x / 0) = inf for x > 0."""
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return math.inf
    return x * math.log(x / y)


def binary_kl(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) in nats, for q, p in [0, 1]."""
    q, p = float(q), float(p)
    for name, v in (("q", q), ("p", p)):
        if not 0.0 <= v <= 1.0:
            raise GenboundError(f"binary_kl: {name} must be a probability in [0, 1]; found {v!r}.")
    if 0.0 < q < 1.0 and 0.0 < p < 1.0:
        # log1p of the exact difference keeps kl accurate to a few ulps when p is near q
        # (the two terms cancel to first order in p - q).
        d = q - p
        return q * math.log1p(d / p) + (1.0 - q) * math.log1p(-d / (1.0 - p))
    return _xlogy_ratio(q, p) + _xlogy_ratio(1.0 - q, 1.0 - p)


def kl_inverse(q: float, c: float) -> float:
    """Upper inverse of the binary KL: max {p in [q, 1] : kl(q || p) <= c}.

    Args:
        q: empirical error in [0, 1].
        c: budget in nats, >= 0 (``inf`` gives 1).

    Returns:
        p in [q, 1], float64. Computed by bisection on [q, 1] to the last bit of
        float64 (kl(q || .) is increasing on [q, 1]); the closed form
        ``1 - exp(-c)`` is used for q = 0.
    """
    q, c = float(q), float(c)
    if not 0.0 <= q <= 1.0 or math.isnan(q):
        raise GenboundError(f"kl_inverse: the error q must lie in [0, 1]; found {q!r}.")
    if not c >= 0.0:
        raise GenboundError(f"kl_inverse: the budget c must be >= 0 nats; found {c!r}.")
    if q == 1.0 or math.isinf(c):
        return 1.0
    if q == 0.0:
        return -math.expm1(-c)
    if c == 0.0:
        return q
    lo, hi = q, 1.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            return hi
        if binary_kl(q, mid) <= c:
            lo = mid
        else:
            hi = mid
