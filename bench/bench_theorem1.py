"""Benchmark: Theorem 1 (corrected) for 1,000 layers, log-space recursion vs naive float64.

Run: ``python bench/bench_theorem1.py``. Prints the best-of-N time of
``genbound.bounds.theorem1`` for L = 1,000 layers (goal: under 10 ms) and shows that the
naive float64 forms (the closed-form products and the plain recursion) overflow to inf
(or to inf - inf = nan) where the log-space result is finite.
"""

from __future__ import annotations

import math
import time

import numpy as np

from genbound.bounds import theorem1


def naive_closed_form(a: np.ndarray, b: np.ndarray, lloss: float = 1.0) -> float:
    """Phi_dW = 2 L_loss (prod(a + b) - prod(a)) in float64 (no offsets, L_l = C = 1)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(2 * lloss * (np.prod(a + b) - np.prod(a)))


def naive_recursion(a, b, c) -> float:
    """The same recursion as theorem1, in plain float64 (no logarithms)."""
    n, d = 1.0, 0.0
    for al, bl, cl in zip(a, b, c, strict=True):
        n, d = (al + bl) * n + cl, al * d + bl * n
    return 2.0 * d


def main(num_layers: int = 1000, repeats: int = 50) -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(1.0, 10.0, num_layers)  # spectral norms of pretrained weights
    b = rng.uniform(0.0, 1.0, num_layers)  # spectral norms of updates
    c = np.full(num_layers, 0.1)
    theorem1(a, b, offsets=c)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = theorem1(a, b, offsets=c)
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))
    print(
        f"theorem1, L={num_layers}: best {best * 1e3:.3f} ms, median {median * 1e3:.3f} ms "
        f"(goal < 10 ms: {'met' if best < 0.010 else 'NOT met'})"
    )
    print(f"  log10 Phi_dW = {r.log10_phi_dW:.6f}, log10 Phi_W0 = {r.log10_phi_W0:.6f}")
    print(f"  naive float64 product form:  Phi_dW = {naive_closed_form(a, b)!r}")
    with np.errstate(over="ignore"):
        naive = naive_recursion(a.tolist(), b.tolist(), c.tolist())
    print(f"  naive float64 recursion:     Phi_dW = {naive!r}")
    print(f"  float64 overflows above log10 = {math.log10(np.finfo(np.float64).max):.3f}")


if __name__ == "__main__":
    main()
