"""Power-law fits of empirical spectral densities (heavy-tailed self-regularization).

The ESD of a matrix X is the distribution of the eigenvalues lambda = s^2 of X^T X. Its
tail is fitted with a continuous power law p(lambda) ~ lambda^-alpha above x_min by
maximum likelihood, choosing x_min to minimise the Kolmogorov-Smirnov distance
(Clauset, Shalizi & Newman 2009), the method weightwatcher and the ``powerlaw`` package use.

A fit needs data: the MLE's standard error is (alpha - 1) / sqrt(n_tail), so with fewer
than 50 tail points alpha is uncertain by more than 0.14 (alpha - 1), about +-0.3 at
alpha = 3, and the KS choice of x_min is itself noise. A matrix with fewer than
``MIN_EIGENVALUES`` = 100 nonzero eigenvalues (every LoRA update of rank <= 64) gets
:class:`NotApplicable`, never a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_EIGENVALUES = 100
MIN_TAIL = 50


@dataclass(frozen=True)
class PowerLawFit:
    """alpha of p(lambda) ~ lambda^-alpha for lambda >= xmin.

    Attributes:
        alpha: the MLE exponent.
        alpha_stderr: (alpha - 1) / sqrt(n_tail).
        xmin: lower end of the fitted tail.
        n_tail: eigenvalues >= xmin.
        n_eigenvalues: nonzero eigenvalues available.
        ks_distance: KS distance between the tail and the fitted law.
    """

    alpha: float
    alpha_stderr: float
    xmin: float
    n_tail: int
    n_eigenvalues: int
    ks_distance: float
    applicable: bool = True


@dataclass(frozen=True)
class NotApplicable:
    """No fit: the reason says why (too few eigenvalues)."""

    reason: str
    n_eigenvalues: int
    applicable: bool = False


def fit_power_law(
    singular_values: np.ndarray, *, min_eigenvalues: int = MIN_EIGENVALUES, min_tail: int = MIN_TAIL
) -> PowerLawFit | NotApplicable:
    """Fit the ESD tail of a matrix from its singular values (any order)."""
    s = np.asarray(singular_values, dtype=np.float64)
    lam = np.sort(s[s > 0] ** 2)
    lam = lam[lam > lam[-1] * 1e-14] if lam.size else lam
    n = lam.size
    if n < min_eigenvalues:
        return NotApplicable(
            reason=f"{n} nonzero eigenvalues; a power-law fit needs at least {min_eigenvalues} "
            f"(with a tail of >= {min_tail}, the exponent's standard error stays below 0.14 (alpha - 1))",
            n_eigenvalues=n,
        )
    logs = np.log(lam)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j >= i} log lam_j
    best = None
    for i in np.unique(np.searchsorted(lam, lam[: n - min_tail + 1], side="left")):
        tail_n = n - i
        if tail_n < min_tail:
            continue
        denom = suffix[i] - tail_n * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + tail_n / denom
        tail = lam[i:]
        cdf_fit = 1.0 - (tail / lam[i]) ** (1.0 - alpha)
        emp_hi = np.arange(1, tail_n + 1) / tail_n
        emp_lo = np.arange(0, tail_n) / tail_n
        d = float(max(np.max(np.abs(emp_hi - cdf_fit)), np.max(np.abs(emp_lo - cdf_fit))))
        if best is None or d < best[0]:
            best = (d, alpha, float(lam[i]), tail_n)
    if best is None:
        return NotApplicable(reason="no x_min leaves a usable tail", n_eigenvalues=n)
    d, alpha, xmin, tail_n = best
    return PowerLawFit(
        alpha=alpha,
        alpha_stderr=(alpha - 1) / np.sqrt(tail_n),
        xmin=xmin,
        n_tail=tail_n,
        n_eigenvalues=n,
        ks_distance=d,
    )
