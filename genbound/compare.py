"""Compare a sweep of checkpoints: which measure tracks the measured generalization gap?

Input is the ``report.json`` of each checkpoint. Each measure (a bound, a norm, a count,
a curvature or landscape scalar) is ranked against the measured gap with Kendall's tau,
with a bootstrap interval over checkpoints. When several hyper-parameters vary, the
granulated form (Jiang et al. 2020, "Fantastic generalization measures") is reported as
well: for each hyper-parameter, tau within every group of runs that agree on all the
others, averaged over groups, then over hyper-parameters.

A measure is uninformative, and not ranked, when (checked in this order):

* fewer than two runs have both the measure and the gap;
* it is a bound that is vacuous in every run: at or above its trivial value there (the
  loss range for the MI and Occam bounds, chance level for the compression bound on the
  test error), as the run's own report gives it;
* its values differ by no more than :data:`RELATIVE_PRECISION` (1e-6) of their largest
  magnitude. Measures are computed from weights stored in float32 (relative rounding
  6e-8 per entry, accumulated over sums of thousands of entries), so differences below
  1e-6 relative are not differences between the checkpoints. A bound within 1e-6 of 1 is
  also at or above chance, so the vacuity rule already covers bounds whose distance to 1
  would be the informative number;
* the gap itself is the same in every run (nothing to rank against).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genbound.errors import GenboundError
from genbound.measures import sweep_scalars
from genbound.measures.base import Scalar
from genbound.measures.reading import get as _get
from genbound.measures.reading import number as _num
from genbound.measures.user import flat_values

Row = dict[str, Any]

#: A measure read from a report (the sweep scalars of :mod:`genbound.measures`).
Measure = Scalar

#: Measures read from a report, by name: every registered measure's sweep scalars, in
#: registry order. User measures are not here: each report brings its own values
#: (``"measures"`` in report.json), and :func:`sweep_rows` adds them as columns.
MEASURES: dict[str, Scalar] = dict(sweep_scalars())

#: Gap targets, by name.
TARGETS: dict[str, Callable[[Mapping], float | None]] = {
    "gap_error": lambda d: _num(_get(d, "gap", "error_gap")),
    "gap_loss": lambda d: _num(_get(d, "gap", "loss_gap")),
    "test_error": lambda d: _num(_get(d, "gap", "test", "error")),
    "train_error": lambda d: _num(_get(d, "gap", "train", "error")),
}


def sweep_rows(docs: Mapping[str, Mapping]) -> list[Row]:
    """One row per report (keyed by run name): variant, hyper-parameters, measures, targets,
    ``vacuous``: the bounds at or above their trivial value in that run, and
    ``user_measures``: the columns its user measures added (``<name>``, or ``<name>.<key>``
    for a mapping)."""
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
        vacuous = []
        for m, measure in MEASURES.items():
            row[m] = measure.read(doc)
            level = measure.trivial(doc) if measure.trivial is not None else None
            if row[m] is not None and level is not None and row[m] >= level:
                vacuous.append(m)
        for t, fn in TARGETS.items():
            row[t] = fn(doc)
        row["vacuous"] = vacuous
        user = doc.get("measures")
        user = user if isinstance(user, Mapping) else {}
        values = {k: v for name, x in user.items() for k, v in flat_values(name, x).items()}
        row.update({k: v for k, v in values.items() if k not in row})
        row["user_measures"] = [k for k in values if k not in MEASURES]
        rows.append(row)
    return rows


def measure_names(rows: Sequence[Row]) -> list[str]:
    """Every measure the rows can be ranked on: genbound's (:data:`MEASURES`), then the
    user measures any row has, in order of first appearance."""
    user = dict.fromkeys(k for r in rows for k in r.get("user_measures", ()))
    return list(MEASURES) + [k for k in user if k not in MEASURES]


def measure_description(name: str) -> str:
    """How tables and axes name a measure (a user measure: its own name)."""
    return MEASURES[name].description if name in MEASURES else name


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
        informative: False when the measure cannot be ranked (see the module docstring);
            ``why_uninformative`` then says why.
        rank: 1 for the informative measure with the highest tau, 2 for the next, ...;
            None for an uninformative one.
        expected_sign: +1 when the measure claims a larger value means a larger gap
            (bounds, norms, sharpness), -1 when a smaller one does (flatness), None when it
            claims neither (user measures); a measure that tracks the gap as it claims has
            tau of that sign.
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
    informative: bool = True
    why_uninformative: str | None = None
    rank: int | None = None
    expected_sign: int | None = None


#: Values that differ by at most this fraction of their largest magnitude count as equal.
RELATIVE_PRECISION = 1e-6


def uninformative_reason(rows: Sequence[Row], measure: str, target: str) -> str | None:
    """Why ``measure`` cannot be ranked against ``target`` over ``rows`` (None if it can);
    the rules are listed in the module docstring."""
    ok = [r for r in rows if _finite(r.get(measure)) and _finite(r.get(target))]
    if len(ok) < 2:
        have = "no run has" if not ok else "only one run has"
        return f"{have} both this measure and {target}"
    spec = MEASURES.get(measure)
    if (
        spec is not None
        and spec.trivial is not None
        and all(measure in r.get("vacuous", ()) for r in ok)
    ):
        return f"vacuous in every run (at or above {spec.trivial_name})"
    values = np.array([r[measure] for r in ok], dtype=float)
    spread = float(values.max() - values.min())
    if spread == 0.0:
        return f"the same value in every run ({values[0]:.6g})"
    if spread <= RELATIVE_PRECISION * float(np.abs(values).max()):
        return (
            f"its values differ by {spread:.2g}, less than {RELATIVE_PRECISION:g} of their "
            "size: below their numerical precision"
        )
    gaps = np.array([r[target] for r in ok], dtype=float)
    if float(gaps.max() - gaps.min()) == 0.0:
        return f"{target} is the same in every run"
    return None


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
    """Kendall's tau of every measure against ``target``, with bootstrap intervals, in the
    order of ``measures``; informative measures are ranked by tau (highest first)."""
    if target not in TARGETS:
        raise GenboundError(f"unknown target {target!r}; expected one of {list(TARGETS)}.")
    known = measure_names(rows)
    names = list(measures or known)
    rng = np.random.default_rng(seed)
    out = []
    for m in names:
        if m not in known:
            raise GenboundError(f"unknown measure {m!r}; expected one of {known}.")
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
        why = uninformative_reason(rows, m, target)
        out.append(
            Correlation(
                m, target, len(ok), tau, low, high, level, n_boot, int(boots.size),
                granulated_tau(ok, m, target, hparams), why is None, why,
            )
        )  # fmt: skip
    ranked = sorted((c for c in out if c.informative), key=lambda c: -c.tau)
    order = {c.measure: i + 1 for i, c in enumerate(ranked)}
    return [
        dataclasses.replace(c, rank=order.get(c.measure), expected_sign=_expected_sign(c.measure))
        for c in out
    ]


def _expected_sign(measure: str) -> int | None:
    spec = MEASURES.get(measure)
    if spec is None or spec.larger_gap is None:
        return None
    return 1 if spec.larger_gap else -1


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
