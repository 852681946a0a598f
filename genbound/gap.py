"""The empirical generalization gap, the quantity every bound and measure is judged against.

G = mean test loss - mean train loss on the same weights, in eval mode, both averaged
per unit (per example, not per batch), signed, for the objective's metric: its loss
(cross-entropy for classification) and its error (the 0-1 error for classification), with
the number of units and a standard error (the two samples are independent:
se = sqrt(se_train^2 + se_test^2)). Losses and errors are the metric's, of the model's
outputs cast to float64.

Units may weigh differently (a language model's texts count their predicted tokens, see
:attr:`~genbound.tasks.objective.Objective.weight`): the means are then
``sum_i w_i l_i / sum_i w_i`` (token-weighted), the units stay the independent draws, and
the standard error is the ratio estimator's,
``sqrt(sum_i (w_i (l_i - mean))^2 / (n (n - 1))) / mean(w)``, which is the plain one when
every w_i = 1. The unweighted means over units (per-document means) are kept beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.tasks.objective import Objective
from genbound.tasks.state import preserved_state


@dataclass(frozen=True)
class SplitEval:
    """Per-example means over one split.

    Attributes:
        n: units (examples; texts for a language model).
        loss, loss_stderr: mean loss (the metric's, e.g. cross-entropy in nats) and its
            standard error (weighted by the units' weights when they have them).
        error, error_stderr: mean error (the metric's, e.g. 0-1) and its standard error.
        max_loss: the largest per-unit loss (to check a clipping range).
        n_tokens: sum of the units' weights: the predicted tokens of a language model's
            texts; None when every unit counts 1.
        unit_loss, unit_error: the unweighted means over units (per-document means), None
            when every unit counts 1 (they equal ``loss`` and ``error``).
    """

    n: int
    loss: float
    loss_stderr: float
    error: float
    error_stderr: float
    max_loss: float
    n_tokens: int | float | None = None
    unit_loss: float | None = None
    unit_error: float | None = None


@dataclass(frozen=True)
class GapResult:
    """test - train, for the metric's loss and error, with standard errors.

    ``loss_name``, ``loss_unit``, ``error_name``, ``error_range``, ``chance`` and ``unit``
    say what was measured (from the objective's metric; the defaults are classification's).
    """

    train: SplitEval
    test: SplitEval
    loss_gap: float
    loss_gap_stderr: float
    error_gap: float
    error_gap_stderr: float
    assumptions: tuple[str, ...] = (
        "train and test evaluated on the same weights, in eval mode",
        "means are per example; the standard error treats the two splits as independent samples",
    )
    loss_name: str = "cross-entropy"
    loss_unit: str = "nats"
    error_name: str = "0-1 error"
    error_range: float = 1.0
    chance: float | None = None
    unit: str = "examples"
    weight_unit: str | None = None


@dataclass(frozen=True)
class UnitScores:
    """Per unit, in the objective's batch order: ``losses``, ``errors`` and ``weights``
    (n,) float64 (weights 1 unless the objective weighs its units)."""

    losses: np.ndarray
    errors: np.ndarray
    weights: np.ndarray

    @property
    def mean_error(self) -> float:
        """sum_i w_i e_i / sum_i w_i."""
        return weighted_mean(self.errors, self.weights)


def score_units(objective: Objective) -> UnitScores:
    """Per-unit losses, errors and weights over the objective's batches, in eval mode,
    float64 (:meth:`~genbound.tasks.objective.Objective.scores`).

    One forward pass per batch. The model's mode and every other state is restored
    afterwards.
    """
    losses, errors, weights = [], [], []
    with preserved_state(objective.model), torch.no_grad():
        objective.model.eval()
        for batch in objective.batches:
            loss, error = objective.scores(batch)
            losses.append(_per_unit(loss, batch, objective).cpu())
            errors.append(_per_unit(error, batch, objective).cpu())
            weights.append(objective.weights_of(batch))
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    return UnitScores(cat(losses), cat(errors), cat(weights))


def evaluate(objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (losses, errors) over the objective's batches (see :func:`score_units`)."""
    s = score_units(objective)
    return s.losses, s.errors


def mean_error(objective: Objective) -> float:
    """The objective's weighted mean error (its metric's), in eval mode."""
    return score_units(objective).mean_error


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """sum_i w_i v_i / sum_i w_i in float64 (nan for no weight)."""
    total = float(weights.sum())
    return float((weights * values).sum() / total) if total > 0 else math.nan


def _per_unit(values: torch.Tensor, batch, objective: Objective) -> torch.Tensor:
    if values.shape != (len(batch),):
        raise GenboundError(
            f"{objective.description or 'objective'}: the metric {objective.metric.name!r} must "
            f"give one value per unit ({objective.metric.unit}), shape ({len(batch)},), for a "
            f"batch of {len(batch)}; found shape {tuple(values.shape)}."
        )
    return values


def _scoring(metric) -> tuple:
    return (metric.loss, metric.error, metric.error_range, metric.unit)


def split_eval(
    losses: np.ndarray, errors: np.ndarray, weights: np.ndarray | None = None
) -> SplitEval:
    """Means and standard errors over one split's units (weighted when ``weights`` is
    given: see the module docstring)."""
    n = int(losses.size)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)

    def mean_se(x: np.ndarray) -> tuple[float, float]:
        m = weighted_mean(x, w)
        if n < 2 or not w.sum() > 0:
            return m, math.inf
        z = w * (x - m) / w.mean()
        return m, float(math.sqrt(float((z * z).sum()) / (n * (n - 1))))

    loss, loss_se = mean_se(losses)
    error, error_se = mean_se(errors)
    weighted = weights is not None
    return SplitEval(
        n=n,
        loss=loss,
        loss_stderr=loss_se,
        error=error,
        error_stderr=error_se,
        max_loss=float(losses.max(initial=0.0)),
        n_tokens=_whole(float(w.sum())) if weighted else None,
        unit_loss=float(losses.mean()) if weighted and n else None,
        unit_error=float(errors.mean()) if weighted and n else None,
    )


def _whole(x: float) -> int | float:
    """``x`` as an int when it is a whole number (a count of tokens)."""
    return int(x) if x.is_integer() else x


def empirical_gap(train: Objective, test: Objective) -> GapResult:
    """The empirical gap of one model between a train and a test objective, scored by the
    train objective's metric (the test objective's must score the same way: same loss,
    error, range and unit)."""
    if _scoring(test.metric) != _scoring(train.metric):
        raise GenboundError(
            f"gap: the train and test objectives must be scored by the same metric; found "
            f"{train.metric.describe()!r} and {test.metric.describe()!r}."
        )
    metric = train.metric

    def split(objective: Objective) -> SplitEval:
        s = score_units(objective)
        return split_eval(s.losses, s.errors, None if objective.weight is None else s.weights)

    tr, te = split(train), split(test)
    extra = {}
    if train.weight is not None:
        per = metric.weight_unit or "weight"
        extra["assumptions"] = (
            "train and test evaluated on the same weights, in eval mode",
            f"means are per {per.removesuffix('s')} (sum over {metric.unit} / number of "
            f"{per}); the standard error treats {metric.unit} as the independent units (ratio "
            "estimator) and the two splits as independent samples",
        )
    return GapResult(
        train=tr,
        test=te,
        loss_gap=te.loss - tr.loss,
        loss_gap_stderr=math.hypot(tr.loss_stderr, te.loss_stderr),
        error_gap=te.error - tr.error,
        error_gap_stderr=math.hypot(tr.error_stderr, te.error_stderr),
        loss_name=metric.loss_name,
        loss_unit=metric.loss_unit,
        error_name=metric.error_name,
        error_range=float(metric.error_range),
        chance=metric.chance,
        unit=metric.unit,
        weight_unit=metric.weight_unit if train.weight is not None else None,
        **extra,
    )
