"""The empirical generalization gap, the quantity every bound and measure is judged against.

G = mean test loss - mean train loss on the same weights, in eval mode, both averaged
per example (not per batch), signed, for the cross-entropy and the 0-1 loss, with the
number of examples and a standard error (the two samples are independent:
se = sqrt(se_train^2 + se_test^2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from genbound.tasks.objective import Objective
from genbound.tasks.state import preserved_state


@dataclass(frozen=True)
class SplitEval:
    """Per-example means over one split.

    Attributes:
        n: examples.
        loss, loss_stderr: mean cross-entropy (nats) and its standard error.
        error, error_stderr: mean 0-1 error and its standard error.
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
    """test - train, for cross-entropy (nats) and 0-1 error, with standard errors."""

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


def evaluate(objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (losses, 0-1 errors) over the objective's batches, in eval mode.

    The model's mode and every other state is restored afterwards.
    """
    losses, errors = [], []
    with preserved_state(objective.model), torch.no_grad():
        objective.model.eval()
        for batch in objective.batches:
            logits = objective.logits(batch)
            losses.append(
                torch.nn.functional.cross_entropy(logits.double(), batch.labels, reduction="none")
            )
            errors.append((logits.argmax(dim=-1) != batch.labels).double())
    return torch.cat(losses).cpu().numpy(), torch.cat(errors).cpu().numpy()


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
    """The empirical gap of one model between a train and a test objective."""
    tr = split_eval(*evaluate(train))
    te = split_eval(*evaluate(test))
    return GapResult(
        train=tr,
        test=te,
        loss_gap=te.loss - tr.loss,
        loss_gap_stderr=math.hypot(tr.loss_stderr, te.loss_stderr),
        error_gap=te.error - tr.error,
        error_gap_stderr=math.hypot(tr.error_stderr, te.error_stderr),
    )
