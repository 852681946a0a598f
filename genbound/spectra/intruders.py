"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
of Equivalence").

A top-k left singular vector u_j of the fine-tuned weight W0 + dW is an intruder when
max_i |cos(u_j, u0_i)| < eps over all left singular vectors u0_i of W0. One product
M = U0^T U_k serves every eps. A random unit vector in R^n has max |cos| of about
sqrt(2 ln(2n) / n) (0.13 for n = 768), so keep k small (default 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_EPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Intruders:
    """Intruder counts of one layer for a sweep of eps.

    Attributes:
        k: number of top singular vectors of W0 + dW examined.
        eps: thresholds, ascending.
        counts: intruders at each eps (non-decreasing in eps).
        energy_share: share of the top-k energy sum_j s_j^2 that the intruders carry, per eps.
        max_cos: (k,) max_i |cos(u_j, u0_i)| for each top vector j.
        singular_values: (k,) top singular values of W0 + dW.
        random_level: sqrt(2 ln(2n) / n), the max |cos| a random direction would show.
    """

    k: int
    eps: tuple[float, ...]
    counts: tuple[int, ...]
    energy_share: tuple[float, ...]
    max_cos: np.ndarray
    singular_values: np.ndarray
    random_level: float

    def count_at(self, eps: float) -> int:
        return self.counts[self.eps.index(eps)]


def count_intruders(
    base_u: np.ndarray, top_u: np.ndarray, top_s: np.ndarray, eps: Sequence[float] = DEFAULT_EPS
) -> Intruders:
    """Intruders of top vectors ``top_u`` (n x k) against W0's left vectors ``base_u`` (n x r0)."""
    cosines = np.asarray(base_u, dtype=np.float64).T @ np.asarray(top_u, dtype=np.float64)
    return intruders_from_cosines(cosines, top_s, top_u.shape[0], eps)


def intruders_from_cosines(
    cosines: np.ndarray, top_s: np.ndarray, n: int, eps: Sequence[float] = DEFAULT_EPS
) -> Intruders:
    """Intruders from the cosines U0^T U_k (r0 x k) of the top-k vectors of W0 + dW in R^n."""
    eps = tuple(sorted(float(e) for e in eps))
    m = np.asarray(cosines, dtype=np.float64)
    max_cos = np.abs(m).max(axis=0) if m.size else np.zeros(m.shape[1])
    energy = np.asarray(top_s, dtype=np.float64) ** 2
    total = float(energy.sum())
    counts, shares = [], []
    for e in eps:
        mask = max_cos < e
        counts.append(int(mask.sum()))
        shares.append(float(energy[mask].sum() / total) if total > 0 else 0.0)
    return Intruders(
        k=int(m.shape[1]),
        eps=eps,
        counts=tuple(counts),
        energy_share=tuple(shares),
        max_cos=max_cos,
        singular_values=np.asarray(top_s, dtype=np.float64),
        random_level=float(np.sqrt(2 * np.log(2 * n) / n)),
    )
