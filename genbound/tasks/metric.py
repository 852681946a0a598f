"""How a task scores its model's outputs: the loss, the error the bounds are stated for, and
what N counts.

A :class:`Metric` is what the gap, the MI bound and the compression bound read instead of
assuming classification:

* ``loss(outputs, targets) -> (B,)``: the per-unit loss (cross-entropy in nats for
  classification), computed in the outputs' dtype and differentiable;
* ``error(outputs, targets) -> (B,)``: the per-unit error the bounds are about, float64,
  with values in [0, ``error_range``] (the 0-1 error for classification);
* ``unit``: what one of the N training units is (``"examples"``);
* ``loss_range``: the loss lies in [0, loss_range] (None: unbounded, as cross-entropy);
* ``chance``: the error the trivial predictor scores (1 - 1/K for K classes), the level at
  or above which an error bound says nothing; None when not defined.

:func:`classification` and :func:`clipped_squared_error` build the two metrics genbound
knows; any other is a :class:`Metric` built by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genbound.errors import GenboundError

__all__ = [
    "Metric",
    "OutputLoss",
    "classification",
    "clipped_squared_error",
    "mean_predictor_error",
]

#: The smoothing level a of the MI bound's loss for a language model: the NLL of
#: p' = (1 - a) p + a / V, in [0, ln(1 + (1 - a) V / a)] nats (Lotfi et al. 2024's grid
#: holds 0.1).
LM_SMOOTHING = 0.1

#: ``loss(outputs, targets) -> (B,)``: one value per unit from a batch's model outputs
#: (B, ...) and its targets (B, ...) (class indices (B,) for classification).
OutputLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A task's loss and error, their ranges, the error's chance level and the unit of N.

    Attributes:
        name: the kind of task, ``"classification"`` or ``"regression"`` (any other name
            is bounded as a loss in [0, error_range] by :meth:`mi_loss`).
        loss_name: the loss in words (``"cross-entropy"``).
        error_name: the error in words (``"0-1 error"``).
        unit: what N counts, ``"examples"``.
        loss: ``loss(outputs, targets) -> (B,)`` per-unit loss, in the outputs' dtype,
            differentiable (the gap evaluates it on float64 outputs).
        error: ``error(outputs, targets) -> (B,)`` per-unit error, float64, in
            [0, error_range].
        error_range: R, the width of the error's range [0, R] (1 for the 0-1 error).
        chance: the error of the trivial predictor (1 - 1/K for K classes); None when not
            defined.
        loss_range: the loss lies in [0, loss_range]; None when unbounded (cross-entropy).
        loss_unit: unit of the loss values (``"nats"``).
        num_classes: K for classification, else None.
        weight_unit: what a unit's weight counts when units weigh differently
            (``"predicted tokens"`` for a language model's texts), else None.
        vocab_size: V of a language model, else None.
    """

    name: str
    loss_name: str
    error_name: str
    unit: str
    loss: OutputLoss
    error: OutputLoss
    error_range: float
    chance: float | None
    loss_range: float | None
    loss_unit: str = "nats"
    num_classes: int | None = None
    weight_unit: str | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        r = self.error_range
        if isinstance(r, bool) or not (isinstance(r, int | float) and math.isfinite(r) and r > 0):
            raise GenboundError(
                f"metric {self.name!r}: error_range must be a finite number > 0; found {r!r}."
            )
        c = self.chance
        if c is not None and not (isinstance(c, int | float) and 0.0 <= c <= r):
            raise GenboundError(
                f"metric {self.name!r}: chance must be None or a number in [0, {r:g}] (the "
                f"error range); found {c!r}."
            )

    @property
    def vacuous_at(self) -> float:
        """The error at or above which a bound on it says nothing: the chance level when
        defined, else the top of the error range."""
        return float(self.chance) if self.chance is not None else float(self.error_range)

    def mi_loss(self) -> dict[str, Any]:
        """Keyword arguments of :func:`genbound.bounds.mi_bound` for a bound on this
        metric's error: ``{"loss": "zero_one"}`` for classification, the NLL of predictions
        smoothed by :data:`LM_SMOOTHING` over V tokens for a language model, else
        ``{"loss": "bounded", "loss_range": R, "loss_description": error_name}``."""
        if self.name == "classification":
            return {"loss": "zero_one"}
        if self.vocab_size is not None:  # a language model: the smoothed NLL per text
            return {
                "loss": "smoothed_ce",
                "smoothing": LM_SMOOTHING,
                "num_classes": int(self.vocab_size),
            }
        return {
            "loss": "bounded",
            "loss_range": float(self.error_range),
            "loss_description": self.error_name,
        }

    def describe(self) -> str:
        """One line: the loss, the error and its range, the chance level and the unit."""
        chance = "not defined" if self.chance is None else f"{self.chance:.4g}"
        loss = (
            self.loss_name
            if self.loss_range is None
            else (f"{self.loss_name} in [0, {self.loss_range:g}]")
        )
        return (
            f"{self.name}: loss {loss} ({self.loss_unit}), error {self.error_name} in "
            f"[0, {self.error_range:g}], chance level {chance}, N counts {self.unit}"
        )


# -- classification ---------------------------------------------------------------------


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def _zero_one(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=-1) != targets).double()


def classification(num_classes: int | None = None) -> Metric:
    """K-class classification: cross-entropy (nats) of the logits (B, K) against class
    indices (B,), the 0-1 error of their argmax, chance level 1 - 1/K (None while K is
    not known)."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise GenboundError(
            f"classification: num_classes must be an integer >= 2 or None; found {num_classes!r}."
        )
    return Metric(
        name="classification",
        loss_name="cross-entropy",
        error_name="0-1 error",
        unit="examples",
        loss=_cross_entropy,
        error=_zero_one,
        error_range=1.0,
        chance=None if num_classes is None else 1.0 - 1.0 / num_classes,
        loss_range=None,
        loss_unit="nats",
        num_classes=num_classes,
    )


# -- regression -------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClippedSquaredError:
    """min(sum of (outputs - targets)^2 over each unit's entries, clip): (B,)."""

    clip: float

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape != targets.shape:
            raise GenboundError(
                f"squared error: expected model outputs of the targets' shape "
                f"{tuple(targets.shape)}; found outputs of shape {tuple(outputs.shape)} (a "
                "model with one output gives (B, 1): give targets of shape (B, 1), or a "
                "forward that returns (B,))."
            )
        diff = outputs - targets
        sq = (diff * diff).reshape(diff.shape[0], -1).sum(dim=1)
        return torch.clamp(sq, max=self.clip)


@dataclass(frozen=True)
class _AsFloat64:
    fn: OutputLoss

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.fn(outputs, targets).double()


def clipped_squared_error(
    clip: float, *, chance: float | None = None, unit: str = "examples"
) -> Metric:
    """Regression with the squared error clipped at ``clip`` = R as both loss and error.

    Per unit: ``min(||outputs - targets||^2, R)`` (the squared error summed over the unit's
    entries; outputs and targets of one shape (B, ...)), a loss and an error in [0, R].
    ``chance``: what the trivial predictor scores, e.g. :func:`mean_predictor_error` of the
    training targets (None: not defined; bounds are then judged against R).
    """
    if isinstance(clip, bool) or not (
        isinstance(clip, int | float) and math.isfinite(clip) and clip > 0
    ):
        raise GenboundError(
            f"clipped_squared_error: clip must be a finite number > 0; found {clip!r}."
        )
    r = float(clip)
    name = f"squared error clipped at {r:g}"
    loss = _ClippedSquaredError(r)
    return Metric(
        name="regression",
        loss_name=name,
        error_name=name,
        unit=unit,
        loss=loss,
        error=_AsFloat64(loss),
        error_range=r,
        chance=None if chance is None else float(chance),
        loss_range=r,
        loss_unit="squared target units",
    )


def mean_predictor_error(targets: torch.Tensor, clip: float) -> float:
    """The mean clipped squared error of predicting the mean target (per entry) for every
    unit of ``targets`` (B, ...): the chance level of :func:`clipped_squared_error` on
    those targets, in float64."""
    t = torch.as_tensor(targets).detach().to(torch.float64)
    if t.dim() == 0 or t.shape[0] == 0:
        raise GenboundError(
            f"mean_predictor_error: expected targets of shape (B, ...) with B >= 1; found "
            f"shape {tuple(t.shape)}."
        )
    trivial = t.mean(dim=0, keepdim=True).expand_as(t)
    return float(clipped_squared_error(clip).loss(trivial, t).mean())
