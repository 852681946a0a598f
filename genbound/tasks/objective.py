"""What curvature, landscapes and the empirical gap evaluate: a model, data, a per-example loss.

An :class:`Objective` is the unit every data-dependent measure works on. Tasks build
it from a checkpoint (the fine-tuned model in eval mode, with the frozen layers below the
first adapted layer already applied to the data, so their outputs are cached), but any
model, list of batches and loss function will do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: ``loss(model, batch) -> (B,)`` per-example losses (float, differentiable).
PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]
#: ``forward(model, batch) -> (B, K)`` logits.
Forward = Callable[[nn.Module, Any], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch: ``inputs`` (a tensor, or a dict of tensors, as the model takes them) and
    ``labels`` (B,) int64 class indices."""

    inputs: Any
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Objective:
    """A model, its data and its per-example loss.

    Attributes:
        model: the module whose parameters analyses perturb or differentiate.
        batches: the data, a sequence of :class:`Batch` (sizes may differ: averages over
            the data weight each batch by its size).
        loss: ``loss(model, batch) -> (B,)`` per-example loss (cross-entropy by default).
        trainable: names of the parameters that were trained (the adapter subspace), as in
            ``model.named_parameters()``.
        description: what model and data this is (for reports).
        forward: ``forward(model, batch) -> (B, K)`` logits, for error rates (default:
            ``model(inputs)``, or its ``.logits``).
    """

    model: nn.Module
    batches: Sequence[Batch]
    loss: PerExampleLoss
    trainable: tuple[str, ...]
    description: str = ""
    forward: Forward | None = None

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, K) logits of ``batch``."""
        return (self.forward or model_logits)(self.model, batch)

    @property
    def num_examples(self) -> int:
        return sum(len(b) for b in self.batches)

    def mean_loss(self) -> float:
        """Mean per-example loss over all batches, summed in float64 (no grad, model mode unchanged)."""
        total = 0.0
        with torch.no_grad():
            for b in self.batches:
                total += float(self.loss(self.model, b).double().sum())
        return total / max(self.num_examples, 1)


def model_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``model(inputs)`` as (B, K) logits (a dict of inputs is passed as keywords; an
    output with ``.logits`` is unwrapped)."""
    out = model(**batch.inputs) if isinstance(batch.inputs, dict) else model(batch.inputs)
    return out.logits if hasattr(out, "logits") else out


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example cross-entropy of :func:`model_logits` against ``batch.labels``."""
    return nn.functional.cross_entropy(model_logits(model, batch), batch.labels, reduction="none")
