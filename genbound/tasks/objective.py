"""What curvature, landscapes and the empirical gap evaluate: a model, data, a per-example loss
and the metric that scores its outputs.

An :class:`Objective` is the unit every data-dependent measure works on. Tasks build
it from a checkpoint (the fine-tuned model in eval mode, with the frozen layers below the
first adapted layer already applied to the data, so their outputs are cached), but any
model, list of batches and loss function will do.

The calling conventions, one definition each (training, :func:`genbound.train.fit`, uses
the same ones):

* :data:`Forward`: ``forward(model, batch) -> outputs`` (B, ...), the model's outputs on a
  :class:`Batch` (class logits (B, K), predictions (B, ...));
* :data:`~genbound.tasks.metric.OutputLoss`: ``loss(outputs, targets) -> (B,)``, a loss
  (or error) from the outputs and ``batch.labels``;
* :data:`PerExampleLoss`: ``loss(model, batch) -> (B,)``, the two composed (what
  curvature and landscapes differentiate); :func:`loss_from` builds one;
* :data:`UnitWeight`: ``weight(batch) -> (B,)``, how much each unit counts in a mean (1
  each by default; a causal language model's text counts its predicted tokens), so every
  mean over an objective is ``sum_i w_i l_i / sum_i w_i``;
* :data:`Scorer`: ``score(model, batch) -> (loss (B,), error (B,))`` in float64 without
  gradients, for objectives whose outputs are too large to return whole (a language
  model's logits); by default the metric's loss and error of the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genbound.errors import GenboundError
from genbound.tasks.metric import Metric, OutputLoss, classification

#: ``loss(model, batch) -> (B,)`` per-example losses (float, differentiable).
PerExampleLoss = Callable[[nn.Module, Any], torch.Tensor]
#: ``forward(model, batch) -> (B, ...)`` model outputs (class logits (B, K) for
#: classification).
Forward = Callable[[nn.Module, Any], torch.Tensor]

#: ``weight(batch) -> (B,)`` float64, how much each unit counts in the objective's means.
UnitWeight = Callable[[Any], torch.Tensor]
#: ``score(model, batch) -> (loss (B,), error (B,))``, float64, no gradients.
Scorer = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]

#: The metric of an objective that names none: classification, K not known (no chance level).
CLASSIFICATION = classification()


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch: ``inputs`` as the model takes them (a tensor, a tuple of positional
    tensors, or a dict of keyword tensors) and ``labels`` (B, ...): the targets, int64
    class indices (B,) for classification, floats for regression (also as ``targets``)."""

    inputs: Any
    labels: torch.Tensor

    @property
    def targets(self) -> torch.Tensor:
        """``labels`` under its task-neutral name."""
        return self.labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Objective:
    """A model, its data, its per-example loss and the metric that scores its outputs.

    Attributes:
        model: the module whose parameters analyses perturb or differentiate.
        batches: the data, a sequence of :class:`Batch` (sizes may differ: averages over
            the data weight each batch by its size).
        loss: ``loss(model, batch) -> (B,)`` per-example loss (cross-entropy by default),
            the one curvature and landscapes differentiate; it should be
            ``metric.loss`` of the outputs (:func:`loss_from`).
        trainable: names of the parameters that were trained (the adapter subspace), as in
            ``model.named_parameters()``.
        description: what model and data this is (for reports).
        forward: ``forward(model, batch) -> (B, ...)`` outputs, for the metric (default:
            :func:`model_outputs`).
        metric: the :class:`~genbound.tasks.metric.Metric` the gap and the bounds read (the
            loss and error they report, the error's range and chance level, the unit of
            N); default: classification with K not known.
        weight: ``weight(batch) -> (B,)`` how much each unit counts in every mean over the
            objective (the gap, the curvature's loss, errors of perturbed models); None: 1
            each. The per-unit ``loss`` is then a mean over the unit's parts (a text's
            mean token loss, weighted by its token count).
        score: ``score(model, batch) -> (loss, error)`` per unit, float64 (default: the
            metric's loss and error of :meth:`outputs` cast to float64).
    """

    model: nn.Module
    batches: Sequence[Batch]
    loss: PerExampleLoss
    trainable: tuple[str, ...]
    description: str = ""
    forward: Forward | None = None
    metric: Metric = CLASSIFICATION
    weight: UnitWeight | None = None
    score: Scorer | None = None

    def outputs(self, batch: Batch) -> torch.Tensor:
        """(B, ...) model outputs on ``batch`` (class logits (B, K) for classification)."""
        return (self.forward or model_outputs)(self.model, batch)

    def logits(self, batch: Batch) -> torch.Tensor:
        """:meth:`outputs` under its classification name."""
        return self.outputs(batch)

    def scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (B,), error (B,)) per unit of ``batch``, float64, in the model's current
        mode: ``score`` when given, else the metric's of the outputs cast to float64
        (exact for the argmax of float32 outputs)."""
        if self.score is not None:
            loss, error = self.score(self.model, batch)
            return loss.double(), error.double()
        outputs = self.outputs(batch).double()
        return (
            self.metric.loss(outputs, batch.labels),
            self.metric.error(outputs, batch.labels).double(),
        )

    def weights_of(self, batch: Batch) -> torch.Tensor:
        """(B,) float64 weights of the units of ``batch`` (1 each without ``weight``)."""
        if self.weight is None:
            return torch.ones(len(batch), dtype=torch.float64)
        w = torch.as_tensor(self.weight(batch)).detach().to(torch.float64).reshape(-1)
        if w.shape != (len(batch),):
            raise GenboundError(
                f"{self.description or 'objective'}: the unit weights must have shape "
                f"({len(batch)},), one per unit; found {tuple(w.shape)}."
            )
        return w

    def weighted_sum(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        """sum_i w_i losses_i over the units of ``batch`` (differentiable in ``losses``;
        the plain sum without ``weight``)."""
        if self.weight is None:
            return losses.sum()
        w = self.weights_of(batch).to(device=losses.device, dtype=losses.dtype)
        return (w * losses).sum()

    @property
    def num_examples(self) -> int:
        """Units (examples; texts for a language model)."""
        return sum(len(b) for b in self.batches)

    @property
    def total_weight(self) -> float:
        """sum of the units' weights (:attr:`num_examples` without ``weight``; predicted
        tokens for a language model): what every mean over the objective divides by."""
        if self.weight is None:
            return float(self.num_examples)
        return float(sum(float(self.weights_of(b).sum()) for b in self.batches))

    def mean_loss(self) -> float:
        """Weighted mean per-unit loss over all batches, summed in float64 (no grad, model
        mode unchanged)."""
        total = 0.0
        with torch.no_grad():
            for b in self.batches:
                total += float(self.weighted_sum(self.loss(self.model, b).double(), b))
        return total / max(self.total_weight, 1e-300)


def outputs_of(output: Any) -> torch.Tensor:
    """The outputs tensor of what a model returned: a tensor as is, an object with
    ``.logits`` (Hugging Face) its logits, a tuple or list its first item."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise GenboundError(
        f"expected the model to return its outputs as a tensor, a tuple whose first item is "
        f"a tensor, or an object with .logits; found {type(output).__name__}. Pass a "
        "forward(model, batch) that returns them."
    )


def model_outputs(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The default :data:`Forward`: ``model(**inputs)`` for a dict of inputs,
    ``model(*inputs)`` for a tuple, else ``model(inputs)``; the result through
    :func:`outputs_of`."""
    inputs = batch.inputs
    if isinstance(inputs, dict):
        return outputs_of(model(**inputs))
    if isinstance(inputs, tuple):
        return outputs_of(model(*inputs))
    return outputs_of(model(inputs))


#: :func:`model_outputs` under its classification name.
model_logits = model_outputs


def loss_from(output_loss: OutputLoss, forward: Forward | None = None) -> PerExampleLoss:
    """The :data:`PerExampleLoss` ``output_loss(forward(model, batch), batch.labels)``
    (``forward`` default :func:`model_outputs`), e.g. ``loss_from(metric.loss)``."""
    return _ComposedLoss(output_loss, forward or model_outputs)


@dataclass(frozen=True)
class _ComposedLoss:
    output_loss: OutputLoss
    forward: Forward

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.output_loss(self.forward(model, batch), batch.labels)


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-example cross-entropy of :func:`model_outputs` against ``batch.labels``."""
    return CLASSIFICATION.loss(model_outputs(model, batch), batch.labels)
