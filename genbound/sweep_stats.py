"""Statistics that judge a measure against the measured gap over a sweep of runs.

Pure numpy, on arrays of runs (n runs; M measures at once where they share their runs):

* :func:`kendall_tau_batch`: Kendall's tau-b of many pairs of sequences at once.
* :func:`permutation_tests`: the two-sided permutation p-value of tau-b under H0 "the
  measure is independent of the gap": every one of the n! orderings of the gap values for
  n <= :data:`EXACT_MAX_N`, :data:`N_PERMUTATIONS` seeded random ones beyond.
* :func:`detectable_tau`: the smallest |tau| that n runs can declare significant.
* :func:`granulated_taus`, :func:`granulated_bootstrap`: the granulated tau of Jiang et
  al. 2020 ("Fantastic generalization measures") and its bootstrap over runs.
* :func:`sign_error`: the sign-error of Dziugaite et al. 2020 ("In search of robust
  measures of generalization") over pairs of runs that differ in one hyper-parameter.

Hyper-parameters enter as integer codes, ``codes`` (n, H): runs with the same code in
column h have the same value of hyper-parameter h.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

#: Largest number of runs whose permutation p-value enumerates every ordering (9! = 362,880).
EXACT_MAX_N = 9
#: Random orderings drawn for the Monte Carlo p-value beyond :data:`EXACT_MAX_N` runs.
N_PERMUTATIONS = 20_000
#: A pair of runs counts for the sign-error when its gaps differ by more than this many
#: standard errors of the difference.
RESOLUTION = 2.0
#: Entries (orderings x n^2) per chunk of the permutation tests: 32 MB of float64.
_CHUNK_ENTRIES = 1 << 22


def kendall_tau_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair: x, y (B, n) -> (B,), nan where a row is constant.

    tau_b = sum_{i<j} sx sy / sqrt(sum_{i<j} sx^2 * sum_{i<j} sy^2) with sx = sign(x_i - x_j)
    (ties count in neither numerator nor their own denominator), as scipy's kendalltau.
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    y = np.atleast_2d(np.asarray(y, dtype=float))
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    num = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (nan if fewer than 2 or one is constant)."""
    if len(x) < 2:
        return math.nan
    return float(
        kendall_tau_batch(np.asarray(x, dtype=float)[None], np.asarray(y, dtype=float)[None])[0]
    )


@dataclass(frozen=True)
class PermutationTest:
    """The two-sided permutation test of tau-b against independence.

    Attributes:
        p_value: the fraction of orderings of the gap values whose |tau| is at least the
            observed |tau| (exact); with random orderings (count + 1) / (B + 1).
        method: ``"exact"`` (every ordering) or ``"monte carlo"`` (B random ones).
        permutations: orderings counted: n! or B.
        mc_stderr: the Monte Carlo standard error of ``p_value``, sqrt(p (1 - p) / B);
            None when exact.
    """

    p_value: float
    method: str
    permutations: int
    mc_stderr: float | None


@lru_cache(maxsize=4)
def _all_orderings(n: int) -> np.ndarray:
    """Every permutation of range(n), (n!, n) int64, read-only."""
    out = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    out.flags.writeable = False
    return out


def _signs(v: np.ndarray) -> np.ndarray:
    """sign(v_i - v_j): v (..., n) -> (..., n, n)."""
    return np.sign(v[..., :, None] - v[..., None, :])


def _concordance(sx: np.ndarray, sy: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """|2 S| of each measure under each ordering of the gaps: sx (M, n, n), sy (n, n),
    orders (B, n) -> (B, M), with S = sum_{i<j} sign(x_i - x_j) sign(y_p(i) - y_p(j))
    (small integers, exact in float64)."""
    n = sy.shape[0]
    permuted = sy[orders[:, :, None], orders[:, None, :]].reshape(len(orders), n * n)
    return np.abs(permuted @ sx.reshape(len(sx), n * n).T)


def permutation_tests(
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    exact_max_n: int = EXACT_MAX_N,
    n_permutations: int = N_PERMUTATIONS,
) -> list[PermutationTest | None]:
    """The permutation test of each row of ``x`` (M, n) against ``y`` (n,).

    Permuting the gap values keeps both tie structures, hence tau-b's denominator, so the
    test counts orderings whose |S| (the numerator) reaches the observed one. None for a
    row where tau is undefined (fewer than 2 runs, or ``x`` or ``y`` constant).
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float)
    n = y.shape[0]
    sx, sy = _signs(x), _signs(y)
    defined = (np.abs(sx).sum(axis=(1, 2)) > 0) & bool(np.abs(sy).sum() > 0)
    if n < 2 or not defined.any():
        return [None] * len(x)
    observed = np.abs((sx * sy).sum(axis=(1, 2)))
    exact = n <= exact_max_n
    total = math.factorial(n) if exact else n_permutations
    count = np.zeros(len(x), dtype=np.int64)
    chunk = max(1, _CHUNK_ENTRIES // (n * n))
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        if exact:
            orders = _all_orderings(n)[start : start + size]
        else:
            orders = rng.random((size, n)).argsort(axis=1)
        count += (_concordance(sx, sy, orders) >= observed - 0.5).sum(axis=0)
    out: list[PermutationTest | None] = []
    for c, ok in zip(count, defined, strict=True):
        if not ok:
            out.append(None)
        elif exact:
            out.append(PermutationTest(float(c) / total, "exact", total, None))
        else:
            p = (float(c) + 1) / (total + 1)
            out.append(PermutationTest(p, "monte carlo", total, math.sqrt(p * (1 - p) / total)))
    return out


@dataclass(frozen=True)
class DetectableTau:
    """The smallest |tau| that ``n`` runs (no ties) declare significant.

    Attributes:
        n: runs.
        alpha: two-sided significance level.
        tau: the smallest |tau| whose permutation p-value is at most ``alpha``; None when
            no tau can be (n <= 4 at 5 %).
        method: ``"exact"`` (the null distribution of every ordering, n <=
            :data:`EXACT_MAX_N`) or ``"normal approximation"``
            (z_{1 - alpha/2} sqrt(2 (2n + 5) / (9 n (n - 1)))).
    """

    n: int
    alpha: float
    tau: float | None
    method: str


@lru_cache(maxsize=32)
def detectable_tau(n: int, alpha: float = 0.05) -> DetectableTau:
    """The smallest |tau| significant at ``alpha`` (two-sided) with ``n`` runs, no ties."""
    if n > EXACT_MAX_N:
        z = NormalDist().inv_cdf(1 - alpha / 2)
        return DetectableTau(
            n, alpha, z * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))), "normal approximation"
        )
    if n < 2:
        return DetectableTau(n, alpha, None, "exact")
    ranks = np.arange(n, dtype=float)
    s = _concordance(_signs(ranks)[None], _signs(ranks), _all_orderings(n))[:, 0] / 2
    values, counts = np.unique(s, return_counts=True)
    tail = np.cumsum(counts[::-1])[::-1] / len(s)  # P(|S| >= value)
    significant = values[(tail <= alpha) & (values > 0)]
    tau = float(significant.min()) / math.comb(n, 2) if significant.size else None
    return DetectableTau(n, alpha, tau, "exact")


def _varying(codes: np.ndarray) -> list[int]:
    """Columns h in which two runs differ while agreeing on every other column."""
    out = []
    for h in range(codes.shape[1]):
        others = np.delete(codes, h, axis=1)
        seen: dict[bytes, int] = {}
        for row, v in zip(others, codes[:, h], strict=True):
            if seen.setdefault(row.tobytes(), v) != v:
                out.append(h)
                break
    return out


def granulated_taus(codes: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The granulated tau of each row of ``x`` (M, n) against ``y`` (n,); (M,), nan where
    undefined.

    Only hyper-parameters that vary on their own (two runs differ in h alone) count; for
    each such h, tau within every group of runs equal in the other counted ones and with
    at least two values of h, averaged over groups, then over hyper-parameters. Within a
    group, a measure that stays constant while the gap changes scores 0 (as Jiang et al.'s
    pair-counting tau gives it); a group whose gap is constant is left out. Undefined with
    fewer than two such hyper-parameters.
    """
    x = np.atleast_2d(np.asarray(x, dtype=float))
    codes = np.asarray(codes)
    varying = _varying(codes)
    if len(varying) < 2:
        return np.full(len(x), np.nan)
    sx, sy = _signs(x), _signs(np.asarray(y, dtype=float))
    per_h = []
    for h in varying:
        others = codes[:, [o for o in varying if o != h]]
        group = np.unique(others, axis=0, return_inverse=True)[1].reshape(-1)
        member = (group[:, None] == np.arange(group.max() + 1)).astype(float)  # (n, groups)
        counted = _within(codes[:, None, h] != codes[None, :, h], member) > 0
        if not counted.any():
            continue
        num = _within(sx * sy, member)[:, counted]
        dx, dy = _within(np.abs(sx), member)[:, counted], _within(np.abs(sy), member)[counted]
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = np.where(dx > 0, num / np.sqrt(dx * dy), 0.0)  # constant measure: 0
        per_h.append(_nanmean(np.where(dy > 0, tau, np.nan).T))  # constant gap: left out
    return _nanmean(np.stack(per_h)) if per_h else np.full(len(x), np.nan)


def _within(pairs: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Sums of ``pairs`` (..., n, n) over the pairs inside each group, ``member`` (n,
    groups) the 0/1 membership of each run: (..., groups)."""
    return ((pairs.astype(float) @ member) * member).sum(axis=-2)


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries; nan where there are none."""
    ok = np.isfinite(a)
    with np.errstate(invalid="ignore"):
        return np.where(ok, a, 0.0).sum(axis=0) / ok.sum(axis=0)


def granulated_bootstrap(
    codes: np.ndarray, x: np.ndarray, y: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """The granulated tau of ``n_boot`` resamples of runs (with replacement): (n_boot, M),
    nan where a resample leaves it undefined. A run drawn twice forms tied pairs, which
    tau-b leaves out."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    n = len(y)
    idx = rng.integers(0, n, (n_boot, n))
    return np.stack([granulated_taus(codes[i], x[:, i], y[i]) for i in idx]).reshape(n_boot, -1)


@dataclass(frozen=True)
class HparamSignError:
    """The sign-error over pairs of runs that differ in one hyper-parameter alone.

    Attributes:
        hparam: the hyper-parameter.
        pairs: pairs of runs that differ in it alone (both with the measure and the gap).
        resolved: those whose gap difference exceeds :data:`RESOLUTION` standard errors of
            the difference, sqrt(se_i^2 + se_j^2); only these count. The rest (a pair whose
            gap has no standard error included) are unresolved: ``pairs - resolved``.
        error: mean over the resolved pairs of (1 - s sign(m_i - m_j) sign(g_i - g_j)) / 2,
            s the expected sign: 0 when the measure orders the gaps as expected, 1 when it
            orders them the other way, 1/2 when it ties them; None without resolved pairs.
    """

    hparam: str
    pairs: int
    resolved: int
    error: float | None


@dataclass(frozen=True)
class SignError:
    """Dziugaite et al.'s sign-error of one measure, per hyper-parameter and the worst.

    Attributes:
        expected_sign: +1 when a larger measure should mean a larger gap, -1 when smaller.
        sign_from: ``"claim"`` (the measure's own direction) or ``"tau"`` (it claims none:
            the sign of its tau over the sweep, which flatters it).
        per_hparam: one entry per hyper-parameter with at least one pair.
        worst: the largest error over hyper-parameters with resolved pairs (None if none).
        worst_hparam: where it is reached (the first in the order given, on a tie).
    """

    expected_sign: int
    sign_from: str
    per_hparam: tuple[HparamSignError, ...]
    worst: float | None
    worst_hparam: str | None


def sign_error(
    codes: np.ndarray,
    hparams: Sequence[str],
    measure: np.ndarray,
    gap: np.ndarray,
    stderr: np.ndarray,
    expected_sign: int,
    sign_from: str = "claim",
    resolution: float = RESOLUTION,
) -> SignError:
    """The sign-error of ``measure`` (n,) against ``gap`` (n,) with standard errors
    ``stderr`` (n,; nan where unknown), over pairs of runs whose ``codes`` (n, H) differ in
    exactly one column (names ``hparams``)."""
    codes = np.asarray(codes)
    m, g, se = (np.asarray(v, dtype=float) for v in (measure, gap, stderr))
    i, j = np.triu_indices(len(g), k=1)
    differ = codes[i] != codes[j]  # (pairs, H)
    single = differ.sum(axis=1) == 1
    i, j, h = i[single], j[single], differ[single].argmax(axis=1)
    dg = g[i] - g[j]
    with np.errstate(invalid="ignore"):
        resolved = np.abs(dg) > resolution * np.sqrt(se[i] ** 2 + se[j] ** 2)
    err = (1 - expected_sign * np.sign(m[i] - m[j]) * np.sign(dg)) / 2
    per = []
    for k, name in enumerate(hparams):
        mine = h == k
        if not mine.any():
            continue
        ok = mine & resolved
        per.append(
            HparamSignError(
                name, int(mine.sum()), int(ok.sum()), float(err[ok].mean()) if ok.any() else None
            )
        )
    scored = [p for p in per if p.error is not None]
    worst = max(scored, key=lambda p: p.error) if scored else None
    return SignError(
        expected_sign,
        sign_from,
        tuple(per),
        worst.error if worst else None,
        worst.hparam if worst else None,
    )


def hparam_codes(values: Sequence[Sequence[object]]) -> np.ndarray:
    """Integer codes (n, H) of the hyper-parameter values of n runs (rows of H values),
    equal values (compared by ``repr``) sharing a code per column."""
    rows = [[repr(v) for v in r] for r in values]
    width = len(rows[0]) if rows else 0
    out = np.zeros((len(rows), width), dtype=np.int64)
    for h in range(width):
        seen: dict[str, int] = {}
        for r, row in enumerate(rows):
            out[r, h] = seen.setdefault(row[h], len(seen))
    return out
