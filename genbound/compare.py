"""Compare a sweep of checkpoints: which measure tracks the measured generalization gap?

Input is the ``report.json`` of each checkpoint. Each measure (a bound, a norm, a count)
is ranked against the measured gap with Kendall's tau, with a bootstrap interval over
checkpoints. When several hyper-parameters vary, the granulated form (Jiang et al. 2020,
"Fantastic generalization measures") is reported as well: for each hyper-parameter, tau
within every group of runs that agree on all the others, averaged over groups, then over
hyper-parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genbound.errors import GenboundError

Row = dict[str, Any]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x in ("inf", "-inf", "nan"):
        return float(x)
    return None


def _get(doc: Mapping, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping) or key not in doc or doc[key] is None:
            return None
        doc = doc[key]
    return doc


def _sum_updates(doc: Mapping, key: str) -> float | None:
    vals = [_num(u.get(key)) for u in doc.get("updates", [])]
    vals = [v for v in vals if v is not None]
    return float(sum(vals)) if vals else None


def _mean_updates(doc: Mapping, key: str) -> float | None:
    vals = [_num(u.get(key)) for u in doc.get("updates", [])]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


#: Measures read from a report, by name: (extractor, description).
MEASURES: dict[str, tuple[Callable[[Mapping], float | None], str]] = {
    "num_trainable": (lambda d: _num(_get(d, "checkpoint", "num_trainable")), "D, trained scalars"),
    "mi_bound": (lambda d: _num(_get(d, "bounds", "mi", "bound")), "MI bound (0-1 loss)"),
    "occam_bound": (lambda d: _num(_get(d, "bounds", "mi", "occam_bound")), "Occam bound"),
    "compression_bound": (
        lambda d: _num(_get(d, "bounds", "compression", "bound")),
        "compression bound on test error",
    ),
    "compression_bits": (
        lambda d: _num(_get(d, "bounds", "compression", "code_bits")),
        "K, bits of the compressed update",
    ),
    "log10_phi_dW": (
        lambda d: _num(_get(d, "bounds", "theorem1", "log10_phi_dW")),
        "Theorem 1 log10 Phi_dW",
    ),
    "sum_dW_frobenius": (
        lambda d: _sum_updates(d, "frobenius_norm"),
        "sum of ||dW||_F over updates",
    ),
    "sum_dW_spectral": (lambda d: _sum_updates(d, "spectral_norm"), "sum of ||dW||_2"),
    "mean_effective_rank": (
        lambda d: _mean_updates(d, "effective_rank"),
        "mean effective rank of dW",
    ),
    "mean_relative_spectral": (
        lambda d: _mean_updates(d, "relative_spectral"),
        "mean ||dW||_2 / ||W0||_2",
    ),
}

#: Gap targets, by name.
TARGETS: dict[str, Callable[[Mapping], float | None]] = {
    "gap_error": lambda d: _num(_get(d, "gap", "error_gap")),
    "gap_loss": lambda d: _num(_get(d, "gap", "loss_gap")),
    "test_error": lambda d: _num(_get(d, "gap", "test", "error")),
    "train_error": lambda d: _num(_get(d, "gap", "train", "error")),
}


def sweep_rows(docs: Mapping[str, Mapping]) -> list[Row]:
    """One row per report (keyed by run name): variant, hyper-parameters, measures, targets."""
    rows = []
    for name, doc in docs.items():
        ck = doc.get("checkpoint", {})
        hp = ck.get("hparams", {}) or {}
        row: Row = {
            "run": name,
            "variant": ck.get("variant"),
            "rank": hp.get("rank"),
            "chain": hp.get("chain"),
            "seed": _get(doc, "data", "reference", "kwargs", "seed"),
        }
        for m, (fn, _) in MEASURES.items():
            row[m] = fn(doc)
        for t, fn in TARGETS.items():
            row[t] = fn(doc)
        rows.append(row)
    return rows


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
class Correlation:
    """Kendall's tau of one measure against one target over the runs that have both.

    Attributes:
        measure, target: names (see :data:`MEASURES`, :data:`TARGETS`).
        n: runs used.
        tau: tau-b over those runs (nan if fewer than 2 or a constant column).
        low, high: percentile bootstrap interval (``level``) from ``n_boot`` resamples of
            runs with replacement (resamples with an undefined tau are dropped;
            ``n_valid`` counts the rest).
        granulated: the granulated tau over ``hparams`` (None when fewer than two vary).
    """

    measure: str
    target: str
    n: int
    tau: float
    low: float
    high: float
    level: float
    n_boot: int
    n_valid: int
    granulated: float | None


def granulated_tau(
    rows: Sequence[Row], measure: str, target: str, hparams: Sequence[str]
) -> float | None:
    """Mean over hyper-parameters h of the mean over groups (runs equal in every other
    hyper-parameter, at least two distinct h values) of tau within the group.

    Only hyper-parameters that vary on their own (two runs differ in h alone) count; with
    fewer than two of them the granulated form is undefined (None).
    """
    varying = [h for h in hparams if _varies_alone(rows, h, hparams)]
    if len(varying) < 2:
        return None
    per_h = []
    for h in varying:
        others = [o for o in varying if o != h]
        groups: dict[tuple, list[Row]] = {}
        for r in rows:
            groups.setdefault(tuple(repr(r.get(o)) for o in others), []).append(r)
        taus = [
            kendall_tau([r[measure] for r in g], [r[target] for r in g])
            for g in groups.values()
            if len({repr(r.get(h)) for r in g}) > 1
        ]
        taus = [t for t in taus if not math.isnan(t)]
        if taus:
            per_h.append(float(np.mean(taus)))
    return float(np.mean(per_h)) if per_h else None


def _varies_alone(rows: Sequence[Row], h: str, hparams: Sequence[str]) -> bool:
    """True when two runs differ in ``h`` and agree on every other hyper-parameter."""
    seen: dict[tuple, set[str]] = {}
    for r in rows:
        key = tuple(repr(r.get(o)) for o in hparams if o != h)
        seen.setdefault(key, set()).add(repr(r.get(h)))
    return any(len(v) > 1 for v in seen.values())


def rank_correlations(
    rows: Sequence[Row],
    *,
    target: str = "gap_error",
    measures: Sequence[str] | None = None,
    hparams: Sequence[str] = ("variant", "rank", "chain", "seed"),
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> list[Correlation]:
    """Kendall's tau of every measure against ``target``, with bootstrap intervals."""
    if target not in TARGETS:
        raise GenboundError(f"unknown target {target!r}; expected one of {list(TARGETS)}.")
    names = list(measures or MEASURES)
    rng = np.random.default_rng(seed)
    out = []
    for m in names:
        if m not in MEASURES:
            raise GenboundError(f"unknown measure {m!r}; expected one of {list(MEASURES)}.")
        ok = [r for r in rows if _finite(r.get(m)) and _finite(r.get(target))]
        x = np.array([r[m] for r in ok], dtype=float)
        y = np.array([r[target] for r in ok], dtype=float)
        tau = kendall_tau(x, y)
        boots = np.zeros(0)
        if len(ok) >= 2:
            idx = rng.integers(0, len(ok), (n_boot, len(ok)))  # resamples of runs, one per row
            boots = kendall_tau_batch(x[idx], y[idx])
            boots = boots[~np.isnan(boots)]
        a = (1 - level) / 2
        low, high = (
            (float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)))
            if boots.size
            else (math.nan, math.nan)
        )
        out.append(
            Correlation(
                m, target, len(ok), tau, low, high, level, n_boot, int(boots.size),
                granulated_tau(ok, m, target, hparams),
            )
        )  # fmt: skip
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
