"""The empirical generalization gap, the quantity every bound and measure is judged against.

G = mean test loss - mean train loss on the same weights, in eval mode, both averaged
per unit (per example, not per batch), signed, for the objective's metric: its loss
(cross-entropy for classification) and its error (the 0-1 error for classification), with
the number of units and a standard error (the two samples are independent:
se = sqrt(se_train^2 + se_test^2)). Losses and errors are the metric's, of the model's
outputs cast to float64.
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
        n: units (examples).
        loss, loss_stderr: mean loss (the metric's, e.g. cross-entropy in nats) and its
            standard error.
        error, error_stderr: mean error (the metric's, e.g. 0-1) and its standard error.
        max_loss: the largest per-example loss (to check a clipping range).
    """

    n: int
    loss: float
    loss_stderr: float
    error: float
    error_stderr: float
    max_loss: float


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


def evaluate(objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (losses, errors) over the objective's batches, in eval mode, float64: the
    metric's loss and error of the outputs cast to float64.

    One forward pass per batch. The model's mode and every other state is restored
    afterwards.
    """
    metric = objective.metric
    losses, errors = [], []
    with preserved_state(objective.model), torch.no_grad():
        objective.model.eval()
        for batch in objective.batches:
            # float64 outputs: exact for the argmax of float32 logits, so the 0-1 error is
            # that of the model's own outputs
            outputs = objective.outputs(batch).double()
            losses.append(_per_unit(metric.loss(outputs, batch.labels), batch, objective))
            errors.append(_per_unit(metric.error(outputs, batch.labels), batch, objective).double())
    return torch.cat(losses).cpu().numpy(), torch.cat(errors).cpu().numpy()


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


def split_eval(losses: np.ndarray, errors: np.ndarray) -> SplitEval:
    n = int(losses.size)

    def se(x: np.ndarray) -> float:
        return float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf

    return SplitEval(
        n=n,
        loss=float(losses.mean()),
        loss_stderr=se(losses),
        error=float(errors.mean()),
        error_stderr=se(errors),
        max_loss=float(losses.max(initial=0.0)),
    )


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
    tr = split_eval(*evaluate(train))
    te = split_eval(*evaluate(test))
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
    )
