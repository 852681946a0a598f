"""Mutual-information bound per adapter variant (Xu & Raginsky 2017), from a checkpoint.

If the loss is sigma-sub-Gaussian for every weight, ``|E[test - train]| <=
sqrt(2 sigma^2 I(S; W) / N)``; since W0 and the run's own randomness are independent of
the data, ``I(S; W) <= H(dW | seed) <= q D ln 2`` nats, with D the number of trainable
scalars and q the bits per stored scalar. Hence (units: those of the loss)

    bound_MI = sqrt(2 sigma^2 q ln2 D / N)
    Occam (single run, probability >= 1 - delta): B sqrt((q D ln2 + ln(1/delta)) / (2 N))

with B the loss range and sigma = B / 2. D is counted twice: from the checkpoint's
actual trainable tensors (head and ``modules_to_save`` included) and from the variant's
registry formula; both bounds are reported, with any difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint

__all__ = [
    "LOSSES",
    "LayerCount",
    "LossSpec",
    "MIBoundResult",
    "layer_counts",
    "loss_spec",
    "mi_bound",
    "mi_bound_value",
    "occam_bound_value",
]

log = logging.getLogger(__name__)

LN2 = math.log(2.0)

#: Loss choices: 0-1 loss, any loss in [0, B], cross-entropy clipped at B, or the
#: cross-entropy of smoothed predictions p' = (1 - a) p + a / K.
LOSSES = ("zero_one", "bounded", "clipped_ce", "smoothed_ce")


# -- the loss --------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """The loss the bound is stated for.

    Attributes:
        kind: one of :data:`LOSSES`.
        loss_range: B, the width of the interval the loss lies in (loss units, nats for CE).
        sigma: sub-Gaussian parameter, B / 2 (Hoeffding's lemma).
        description: which loss exactly, in words (clipping or smoothing, and at what level).
        smoothing: a for ``smoothed_ce``.
        num_classes: K for ``smoothed_ce``.
    """

    kind: str
    loss_range: float
    sigma: float
    description: str
    smoothing: float | None = None
    num_classes: int | None = None


def loss_spec(
    loss: str = "zero_one",
    *,
    loss_range: float | None = None,
    smoothing: float | None = None,
    num_classes: int | None = None,
    loss_description: str | None = None,
) -> LossSpec:
    """The loss range B and sigma = B / 2 for a loss choice.

    * ``"zero_one"``: B = 1.
    * ``"bounded"``: a loss in [0, B]; ``loss_range`` = B is required; ``loss_description``
      says which loss (e.g. ``"squared error clipped at 4"``; a task's metric gives it,
      :meth:`genbound.tasks.Metric.mi_loss`).
    * ``"clipped_ce"``: min(cross-entropy, B); ``loss_range`` = B (nats) is required.
    * ``"smoothed_ce"``: cross-entropy of p' = (1 - a) p + a / K, whose values lie in an
      interval of width B = ln(1 + (1 - a) K / a) nats; ``smoothing`` = a in (0, 1] and
      ``num_classes`` = K >= 2 are required.
    """
    if loss not in LOSSES:
        raise GenboundError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}.")
    if loss_description is not None and (loss != "bounded" or not str(loss_description).strip()):
        raise GenboundError(
            f"loss_description names the loss of loss='bounded' and must be non-empty; found "
            f"loss={loss!r}, loss_description={loss_description!r}."
        )
    if loss == "smoothed_ce":
        if smoothing is None or num_classes is None:
            raise GenboundError(
                "loss='smoothed_ce' needs smoothing=a (in (0, 1]) and num_classes=K (>= 2); "
                f"found smoothing={smoothing!r}, num_classes={num_classes!r}."
            )
        a, k = float(smoothing), int(num_classes)
        if not 0.0 < a <= 1.0 or k < 2:
            raise GenboundError(
                f"loss='smoothed_ce': expected 0 < smoothing <= 1 and num_classes >= 2; "
                f"found smoothing={smoothing!r}, num_classes={num_classes!r}."
            )
        b = math.log1p((1.0 - a) * k / a)
        desc = (
            f"cross-entropy of smoothed predictions p' = (1 - {a:g}) p + {a:g}/{k}, "
            f"range width ln(1 + (1 - a) K / a) = {b:.6g} nats"
        )
        return LossSpec(loss, b, b / 2.0, desc, smoothing=a, num_classes=k)
    if loss == "zero_one":
        if loss_range is not None and float(loss_range) != 1.0:
            raise GenboundError(
                f"loss='zero_one' has range 1; found loss_range={loss_range!r}. Use "
                "loss='bounded' for another range."
            )
        return LossSpec(loss, 1.0, 0.5, "0-1 loss, range [0, 1]")
    if loss_range is None:
        raise GenboundError(
            f"loss={loss!r} needs loss_range=B (the clip level, or the range [0, B] of the "
            "loss); found none. Cross-entropy is unbounded, so no default is assumed."
        )
    b = float(loss_range)
    if not (math.isfinite(b) and b > 0):
        raise GenboundError(f"loss_range must be a finite number > 0; found {loss_range!r}.")
    if loss == "clipped_ce":
        desc = f"cross-entropy clipped at B: min(CE, {b:g}) nats, range [0, {b:g}]"
    elif loss_description is not None:
        desc = f"{str(loss_description).strip()}, values in [0, {b:g}]"
    else:
        desc = f"a loss with values in [0, {b:g}]"
    return LossSpec(loss, b, b / 2.0, desc)


# -- the formulas -------------------------------------------------------------------


def _check_count(d: int, q: float, n: int) -> None:
    if d < 0 or q <= 0 or n <= 0:
        raise GenboundError(
            f"MI bound: expected D >= 0, q > 0 bits and N > 0 examples; found D={d}, q={q}, N={n}."
        )


def mi_bound_value(d: int, q: float, sigma: float, n_train: int) -> float:
    """sqrt(2 sigma^2 q ln2 D / N): the expected-gap bound in loss units (float64)."""
    _check_count(d, q, n_train)
    return math.sqrt(2.0 * sigma * sigma * q * LN2 * d / n_train)


def occam_bound_value(d: int, q: float, loss_range: float, n_train: int, delta: float) -> float:
    """B sqrt((q D ln2 + ln(1/delta)) / (2 N)): the single-run bound at confidence 1 - delta."""
    _check_count(d, q, n_train)
    if not 0.0 < delta < 1.0:
        raise GenboundError(f"delta must lie in (0, 1); found {delta!r}.")
    return loss_range * math.sqrt((q * d * LN2 + math.log(1.0 / delta)) / (2.0 * n_train))


# -- counting D -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCount:
    """The trainable-parameter count of one update (one base tensor).

    Attributes:
        name: the update's name.
        kind: the update type (``lowrank``, ``selector``, ``chain``, ``dora``, ``dense``;
            ``subspace`` for the z of a subspace run).
        shape: (n, m) outputs x inputs, or (n,).
        d_actual: scalars counted from the stored trainable tensors.
        d_formula: scalars from the registry formula (adapted matrices), else d_actual.
        by_formula: True when the registry formula applies to this update.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    d_actual: int
    d_formula: int
    by_formula: bool


def layer_counts(checkpoint: Checkpoint) -> tuple[LayerCount, ...]:
    """Per-update counts of D, actual and by formula, in the checkpoint's order.

    A subspace run counts what it trained and codes, z: one entry ``subspace z`` of
    shape (links, d) and d per link (its expanded factors are fixed by z and the seed)."""
    sub = checkpoint.subspace
    if sub is not None:
        n = sub.num_coded
        return (LayerCount("subspace z", "subspace", (sub.links, sub.d), n, n, False),)
    out = []
    for name, u in checkpoint.updates.items():
        d_formula, by_formula = checkpoint.formula_count(u)
        out.append(LayerCount(name, u.kind, tuple(u.shape), u.num_trainable, d_formula, by_formula))
    return tuple(out)


# -- the result ------------------------------------------------------------------------

_BASE_ASSUMPTIONS = (
    "training examples are i.i.d. draws from the test distribution",
    "the loss lies in an interval of width B for every weight, so it is sigma = B/2 "
    "sub-Gaussian (Hoeffding's lemma)",
    "W0, the seed, frozen random factors and selectors are independent of the training "
    "data, so I(S; W) <= H(dW | seed) <= q D ln 2 nats",
    "every trainable scalar is stored with q bits (2^(qD) possible updates)",
    "the MI bound is on the expected gap |E[test loss - train loss]| over data and "
    "training randomness",
    "the Occam bound holds for this single run with probability >= 1 - delta over the "
    "sample (uniform prior over the 2^(qD) representable updates)",
)


@dataclass(frozen=True)
class MIBoundResult:
    """MI and Occam bounds of one checkpoint (loss units: those of ``loss``).

    Attributes:
        variant: registry name of the checkpoint's variant.
        d_actual: D counted from the stored trainable tensors (bounds use this).
        d_formula: D from the registry formula for adapted layers.
        d_difference: d_actual - d_formula.
        difference_note: what the difference is and which layers cause it.
        layers: per-update :class:`LayerCount` (contributions to D).
        q: bits per trainable scalar.
        q_source: where q came from.
        n_train: N.
        n_train_source: where N came from.
        loss: the :class:`LossSpec` (B, sigma, and which loss exactly).
        mutual_information_nats: q D ln 2 with D = d_actual (an upper bound on I(S; W)).
        bound: sqrt(2 sigma^2 q ln2 D_actual / N).
        bound_formula: the same with D_formula.
        delta: confidence parameter of the Occam bound.
        occam_bound: B sqrt((q D_actual ln2 + ln(1/delta)) / (2N)).
        occam_bound_formula: the same with D_formula.
        vacuous: bound > B (never clipped).
        occam_vacuous: occam_bound > B.
        assumptions: what the bounds rest on.
        warnings: loss range exceeded by observed losses, vacuity, ...
    """

    variant: str
    d_actual: int
    d_formula: int
    d_difference: int
    difference_note: str
    layers: tuple[LayerCount, ...]
    q: float
    q_source: str
    n_train: int
    n_train_source: str
    loss: LossSpec
    mutual_information_nats: float
    bound: float
    bound_formula: float
    delta: float
    occam_bound: float
    occam_bound_formula: float
    vacuous: bool
    occam_vacuous: bool
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _difference_note(layers: Sequence[LayerCount], d_actual: int, d_formula: int) -> str:
    if d_actual == d_formula:
        return f"D from the stored tensors equals the registry formula ({d_actual})."
    diff = [lc for lc in layers if lc.d_actual != lc.d_formula]
    shown = ", ".join(f"{lc.name} ({lc.d_actual} vs {lc.d_formula})" for lc in diff[:5])
    more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
    return (
        f"D from the stored tensors ({d_actual}) differs from the registry formula "
        f"({d_formula}) by {d_actual - d_formula}; layers that differ (actual vs formula): "
        f"{shown}{more}."
    )


def _observed(checkpoint: Checkpoint, observed: Sequence[float] | None, spec: LossSpec):
    values: list[tuple[str, float]] = []
    if observed is not None:
        values += [("observed_losses", float(v)) for v in observed]
    if spec.kind != "zero_one":  # recorded losses are cross-entropies, not 0-1 errors
        for key, v in (checkpoint.metrics or {}).items():
            if str(key).endswith("loss") and isinstance(v, int | float) and not isinstance(v, bool):
                values.append((f"metrics[{key!r}]", float(v)))
    return values


def mi_bound(
    checkpoint: Checkpoint,
    *,
    n_train: int | None = None,
    bits: float | None = None,
    loss: str = "zero_one",
    loss_range: float | None = None,
    smoothing: float | None = None,
    num_classes: int | None = None,
    delta: float = 0.05,
    observed_losses: Sequence[float] | None = None,
    loss_description: str | None = None,
) -> MIBoundResult:
    """The MI bound and its Occam form for a checkpoint.

    Args:
        checkpoint: the fine-tuned checkpoint.
        n_train: N; defaults to ``checkpoint.n_train``. Missing in both: an error.
        bits: q; defaults to the bits of the stored dtype.
        loss, loss_range, smoothing, num_classes, loss_description: the loss (see
            :func:`loss_spec`); a task's metric gives them, ``**metric.mi_loss()``.
        delta: confidence of the Occam bound.
        observed_losses: losses seen in practice (loss units), checked against the range;
            numeric ``checkpoint.metrics`` entries whose key ends in ``loss`` are checked too
            for the cross-entropy and bounded losses.

    Returns:
        :class:`MIBoundResult`. A bound above the loss range is flagged vacuous and kept.
    """
    spec = loss_spec(
        loss,
        loss_range=loss_range,
        smoothing=smoothing,
        num_classes=num_classes,
        loss_description=loss_description,
    )
    if n_train is None:
        if checkpoint.n_train is None:
            raise GenboundError(
                f"{checkpoint.path}: the MI bound needs N, the number of training examples; "
                "the checkpoint does not record it and none was given. Pass n_train=N "
                "(--n-train N)."
            )
        n, n_source = int(checkpoint.n_train), "checkpoint"
    else:
        n, n_source = int(n_train), "given"
    if n <= 0:
        raise GenboundError(f"n_train must be a positive integer; found {n}.")
    if bits is None:
        q, q_source = float(checkpoint.bits_per_param), f"stored dtype {checkpoint.dtype}"
    else:
        q, q_source = float(bits), "given"
    if not (math.isfinite(q) and q > 0):
        raise GenboundError(f"bits (q) must be a finite number > 0; found {bits!r}.")

    layers = layer_counts(checkpoint)
    d_actual = sum(lc.d_actual for lc in layers)
    d_formula = sum(lc.d_formula for lc in layers)
    b_range = spec.loss_range
    bound = mi_bound_value(d_actual, q, spec.sigma, n)
    bound_f = mi_bound_value(d_formula, q, spec.sigma, n)
    occam = occam_bound_value(d_actual, q, b_range, n, delta)
    occam_f = occam_bound_value(d_formula, q, b_range, n, delta)

    warns = []
    for where, v in _observed(checkpoint, observed_losses, spec):
        if v > b_range or v < 0:
            warns.append(
                f"{where} = {v:.6g} lies outside the loss range [0, {b_range:.6g}]: the "
                f"bound is for {spec.description}, not for the loss observed"
            )
    if bound > b_range:
        warns.append(f"MI bound {bound:.6g} exceeds the loss range {b_range:.6g}: vacuous")
    if occam > b_range:
        warns.append(f"Occam bound {occam:.6g} exceeds the loss range {b_range:.6g}: vacuous")
    assumptions = (*_BASE_ASSUMPTIONS, f"the loss is {spec.description}")
    if spec.kind == "clipped_ce":
        assumptions += ("the bound holds for the clipped loss, not for the raw cross-entropy",)
    if spec.kind == "smoothed_ce":
        assumptions += ("the bound holds for the smoothed predictor, not the raw one",)
    for w in warns:
        log.info("mi_bound: %s", w)
    return MIBoundResult(
        variant=checkpoint.variant,
        d_actual=d_actual,
        d_formula=d_formula,
        d_difference=d_actual - d_formula,
        difference_note=_difference_note(layers, d_actual, d_formula),
        layers=layers,
        q=q,
        q_source=q_source,
        n_train=n,
        n_train_source=n_source,
        loss=spec,
        mutual_information_nats=q * d_actual * LN2,
        bound=bound,
        bound_formula=bound_f,
        delta=float(delta),
        occam_bound=occam,
        occam_bound_formula=occam_f,
        vacuous=bound > b_range,
        occam_vacuous=occam > b_range,
        assumptions=assumptions,
        warnings=tuple(warns),
    )
