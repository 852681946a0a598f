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

Beside tau and its interval, each measure gets (see :mod:`genbound.sweep_stats`): the
exact or Monte Carlo permutation p-value of tau, the granulated tau with a bootstrap
interval, and Dziugaite et al. 2020's sign-error over pairs of runs that differ in one
hyper-parameter (:data:`HPARAMS`) and whose gaps differ by more than two standard errors;
:func:`verdict` reads them in words.
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
from genbound.sweep_stats import (
    PermutationTest,
    SignError,
    granulated_bootstrap,
    granulated_taus,
    hparam_codes,
    kendall_tau,
    kendall_tau_batch,
    permutation_tests,
    sign_error,
)

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

#: The standard error of each target, read from a report; a row holds it as
#: ``<target>_stderr``.
TARGET_STDERRS: dict[str, Callable[[Mapping], float | None]] = {
    "gap_error": lambda d: _num(_get(d, "gap", "error_gap_stderr")),
    "gap_loss": lambda d: _num(_get(d, "gap", "loss_gap_stderr")),
    "test_error": lambda d: _num(_get(d, "gap", "test", "error_stderr")),
    "train_error": lambda d: _num(_get(d, "gap", "train", "error_stderr")),
}

#: The hyper-parameters a row records (None where a report does not say): the variant,
#: the rank and chain length, the data seed, the training-set size, the epochs trained,
#: the learning rate (when the checkpoint's hyper-parameters or metrics record them) and
#: the dimension of a trained subspace (None for a full adapter).
HPARAMS = ("variant", "rank", "chain", "seed", "n_train", "epochs", "lr", "subspace")


def _hparams(doc: Mapping) -> dict[str, Any]:
    """The :data:`HPARAMS` of one report document."""
    ck = doc.get("checkpoint", {})
    hp = ck.get("hparams", {}) or {}
    history = _get(ck, "metrics", "history")
    last = history[-1] if isinstance(history, list) and history else None
    trained = last.get("epoch") if isinstance(last, Mapping) else None
    metrics = ck.get("metrics") if isinstance(ck.get("metrics"), Mapping) else {}

    def recorded(key: str, fallback: Any = None) -> Any:
        """A training setting from the hyper-parameters, else the run's metrics."""
        for where in (hp, metrics):
            if where.get(key) is not None:
                return where[key]
        return fallback

    return {
        "variant": ck.get("variant"),
        "rank": hp.get("rank"),
        "chain": hp.get("chain"),
        "seed": _get(doc, "data", "reference", "kwargs", "seed"),
        "n_train": ck.get("n_train"),
        "epochs": recorded("epochs", trained),
        "lr": recorded("lr"),
        "subspace": _get(ck, "subspace", "d"),
    }


def _objective(doc: Mapping) -> str | None:
    """``"causal_lm"`` for a report whose gap weighs texts by their predicted tokens,
    ``"classification"`` for another gap, None without a gap."""
    gap = doc.get("gap")
    if not isinstance(gap, Mapping):
        return None
    return "causal_lm" if gap.get("weight_unit") == "predicted tokens" else "classification"


def sweep_rows(docs: Mapping[str, Mapping]) -> list[Row]:
    """One row per report (keyed by run name): the :data:`HPARAMS`, measures, targets with
    their standard errors (``<target>_stderr``), ``vacuous``: the bounds at or above their
    trivial value in that run, and ``user_measures``: the columns its user measures added (``<name>``, or ``<name>.<key>``
    for a mapping)."""
    rows = []
    for name, doc in docs.items():
        row: Row = {"run": name, "objective": _objective(doc), **_hparams(doc)}
        vacuous = []
        for m, measure in MEASURES.items():
            row[m] = measure.read(doc)
            level = measure.trivial(doc) if measure.trivial is not None else None
            if row[m] is not None and level is not None and row[m] >= level:
                vacuous.append(m)
        for t, fn in TARGETS.items():
            row[t] = fn(doc)
            row[f"{t}_stderr"] = TARGET_STDERRS[t](doc)
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
        permutation: the two-sided permutation test of tau against independence (None
            where tau is undefined).
        granulated_low, granulated_high: percentile bootstrap interval (``level``) of the
            granulated tau from ``n_boot`` resamples of runs (None where it is undefined);
            ``granulated_n_valid`` counts the resamples where it is defined.
        sign_error: Dziugaite et al.'s sign-error over pairs of runs that differ in one
            hyper-parameter (None when the direction is unknown: no claim and tau 0 or nan).
        verdict: the reading (see :func:`verdict`); None for an uninformative measure.
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
    permutation: PermutationTest | None = None
    granulated_low: float | None = None
    granulated_high: float | None = None
    granulated_n_valid: int = 0
    sign_error: SignError | None = None
    verdict: str | None = None


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
    fewer than two of them the granulated form is undefined (None). A measure constant in a
    group whose gap varies scores 0 there. Every row must have ``measure`` and ``target``.
    """
    if not rows:
        return None
    x = np.array([[r[measure] for r in rows]], dtype=float)
    y = np.array([r[target] for r in rows], dtype=float)
    g = float(granulated_taus(_codes(rows, hparams), x, y)[0])
    return None if math.isnan(g) else g


def _codes(rows: Sequence[Row], hparams: Sequence[str]) -> np.ndarray:
    """The rows' hyper-parameter codes (n, H) (see :func:`genbound.sweep_stats.hparam_codes`)."""
    return hparam_codes([[r.get(h) for h in hparams] for r in rows])


def rank_correlations(
    rows: Sequence[Row],
    *,
    target: str = "gap_error",
    measures: Sequence[str] | None = None,
    hparams: Sequence[str] = HPARAMS,
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[Correlation]:
    """Kendall's tau of every measure against ``target``, with bootstrap intervals, the
    permutation p-value, the granulated tau with its interval and the sign-error, in the
    order of ``measures``; informative measures are ranked by tau (highest first) and read
    at significance ``alpha`` (:func:`verdict`). Seeded by ``seed``: the same rows give the
    same numbers."""
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
        low, high = _interval(boots, level)
        why = uninformative_reason(rows, m, target)
        out.append(
            Correlation(
                m, target, len(ok), tau, low, high, level, n_boot, int(boots.size), None,
                why is None, why, expected_sign=_expected_sign(m),
            )
        )  # fmt: skip
    out = _with_shared_statistics(rows, out, hparams, seed=seed)
    ranked = sorted((c for c in out if c.informative), key=lambda c: -c.tau)
    order = {c.measure: i + 1 for i, c in enumerate(ranked)}
    out = [dataclasses.replace(c, rank=order.get(c.measure)) for c in out]
    return [dataclasses.replace(c, verdict=verdict(c, alpha)) for c in out]


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``values`` (nan, nan when empty)."""
    a = (1 - level) / 2
    if not values.size:
        return math.nan, math.nan
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def _with_shared_statistics(
    rows: Sequence[Row], corr: Sequence[Correlation], hparams: Sequence[str], *, seed: int
) -> list[Correlation]:
    """``corr`` with the permutation test, the granulated tau with its interval and the
    sign-error filled in. Measures observed on the same runs are computed together (one
    enumeration of the gap orderings, one set of resamples); the random orderings and
    resamples are seeded by ``seed``, apart from the tau bootstrap's."""
    if not corr:
        return []
    target = corr[0].target
    by_runs: dict[tuple[int, ...], list[Correlation]] = {}
    for c in corr:
        ok = tuple(
            i for i, r in enumerate(rows) if _finite(r.get(c.measure)) and _finite(r.get(target))
        )
        by_runs.setdefault(ok, []).append(c)
    perm_rng, boot_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    filled: dict[str, Correlation] = {}
    for ok, group in by_runs.items():
        sub = [rows[i] for i in ok]
        filled.update(_group_statistics(sub, group, hparams, perm_rng, boot_rng))
    return [filled[c.measure] for c in corr]


def _group_statistics(
    rows: Sequence[Row],
    group: Sequence[Correlation],
    hparams: Sequence[str],
    perm_rng: np.random.Generator,
    boot_rng: np.random.Generator,
) -> dict[str, Correlation]:
    """The shared statistics of the measures of ``group``, all observed on ``rows``."""
    target = group[0].target
    x = np.array([[r[c.measure] for r in rows] for c in group], dtype=float)
    x = x.reshape(len(group), len(rows))
    y = np.array([r[target] for r in rows], dtype=float)
    se = np.array([_stderr(r, target) for r in rows], dtype=float)
    codes = _codes(rows, hparams).reshape(len(rows), len(hparams))
    tests = permutation_tests(x, y, rng=perm_rng)
    gran = granulated_taus(codes, x, y)
    boots = np.full((0, len(group)), np.nan)
    if np.isfinite(gran).any():
        boots = granulated_bootstrap(codes, x, y, n_boot=group[0].n_boot, rng=boot_rng)
    out = {}
    for k, c in enumerate(group):
        valid = boots[:, k][np.isfinite(boots[:, k])] if math.isfinite(gran[k]) else boots[:0, k]
        low, high = _interval(valid, c.level) if valid.size else (None, None)
        sign = c.expected_sign or (int(np.sign(c.tau)) if math.isfinite(c.tau) else 0)
        errors = (
            sign_error(codes, hparams, x[k], y, se, sign, "claim" if c.expected_sign else "tau")
            if sign
            else None
        )
        out[c.measure] = dataclasses.replace(
            c,
            permutation=tests[k],
            granulated=float(gran[k]) if math.isfinite(gran[k]) else None,
            granulated_low=low,
            granulated_high=high,
            granulated_n_valid=int(valid.size),
            sign_error=errors,
        )
    return out


#: The readings of :func:`verdict`.
VERDICTS = {
    "tracks": "track the gap as they claim",
    "against": "go against their claim",
    "related": "are related to the gap (they claim no direction)",
    "undecided": "cannot be told from noise with these runs",
}


def verdict(c: Correlation, alpha: float = 0.05) -> str | None:
    """How ``c`` reads: ``"tracks"`` when its bootstrap interval excludes 0 on the side of
    its claimed sign and its permutation p-value is below ``alpha``; ``"against"`` when
    both hold on the other side; ``"related"`` when both hold for a measure that claims no
    direction; ``"undecided"`` otherwise (one of :data:`VERDICTS`); None for an
    uninformative measure."""
    if not c.informative:
        return None
    p = c.permutation.p_value if c.permutation is not None else None
    if p is None or not p < alpha or not (c.low > 0 or c.high < 0):
        return "undecided"
    if c.expected_sign is None:
        return "related"
    return "tracks" if (1 if c.low > 0 else -1) == c.expected_sign else "against"


def _expected_sign(measure: str) -> int | None:
    spec = MEASURES.get(measure)
    if spec is None or spec.larger_gap is None:
        return None
    return 1 if spec.larger_gap else -1


def _stderr(row: Row, target: str) -> float:
    """The row's standard error of ``target``; nan when it has none."""
    v = row.get(f"{target}_stderr")
    return float(v) if _finite(v) else math.nan


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
