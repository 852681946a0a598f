"""A small training loop for the demo and tests: AdamW, linear warmup and decay, chain
resets for chained adapters, evaluation in eval mode after every epoch.

Data are ``torch.utils.data.Dataset`` objects whose items are tuples ``(*inputs, label)``
(a ``TensorDataset``), a tuple of tensors ``(*inputs, labels)``, or a list of ready-made
:class:`~genbound.tasks.Batch` objects (length-bucketed batches, e.g. cached hidden states;
their order is shuffled each epoch, their contents are not).

Training uses the conventions of :mod:`genbound.tasks.objective`: every batch is a
:class:`~genbound.tasks.Batch` (a loaded tuple ``(*inputs, labels)`` becomes
``Batch(inputs, labels)``, one input as a tensor, several as a tuple), the outputs are
``forward(model, batch)`` (default :func:`~genbound.tasks.objective.model_outputs`:
``model(*inputs)``, ``model(**inputs)`` for a dict, unwrapping ``.logits`` or a tuple's
first item), and the loss is ``loss_fn(outputs, labels) -> (B,)`` (default: cross-entropy,
the classification metric's loss).

What ``fit`` leaves behind, stated here because nothing is restored: the model holds the
final weights (no best-epoch restore), is in eval mode, and, for chained adapters, its
base weights hold the merged links. The global RNG state is restored (dropout draws use
a forked RNG seeded with ``seed``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from genbound.adapters.handle import AdapterHandle
from genbound.errors import GenboundError
from genbound.tasks.metric import OutputLoss, classification
from genbound.tasks.objective import Batch, Forward, model_outputs

log = logging.getLogger(__name__)

#: Cross-entropy loss and 0-1 error of class logits (the default loss and the accuracy).
CLASSES = classification()

#: A default AdamW learning rate for a subspace run's z (``apply(..., subspace=d)``).
#: P's columns have unit norm, so a step of lr on every coordinate of z moves the D
#: trained scalars by about lr sqrt(d / D) each: z needs about sqrt(D / d) times the
#: factors' own learning rate. 0.1 was the best of 1e-3 .. 0.3 for LoRA and c3LA (0.3
#: for the head alone, 0.1 close) on a 3-class toy task with a 32-24-16-3 MLP, D = 51 to
#: 435, d = 30 to 100, 10 epochs. On the demo (MiniLM's top two layers and head, 6,000
#: tweets, d = 500, D = 56,451 to 111,747, 2 epochs) 0.1 trains LoRA, cLA and c3LA to
#: train errors of 0.30 to 0.34; Asym-LoRA (B only) did better at 0.3 (0.320 against
#: 0.341).
SUBSPACE_LR = 0.1


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        history: one dict per epoch: ``epoch``, ``step``, ``lr``, ``seconds``,
            ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (means over
            examples, eval mode, after the epoch; None where not evaluated), and
            ``epoch_mean_train_loss``, ``epoch_train_acc``: what the training steps of the
            epoch saw (means over its examples, train mode, weights changing as they
            went; the accuracy None when the outputs are not class logits).
        steps: optimizer steps taken.
        chain_steps: steps after which a chain reset ran.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    chain_steps: list[int] = field(default_factory=list)

    def last(self, key: str) -> float | None:
        return self.history[-1].get(key) if self.history else None

    @property
    def train_loss(self) -> float | None:
        return self.last("train_loss")

    @property
    def test_loss(self) -> float | None:
        return self.last("test_loss")

    @property
    def train_acc(self) -> float | None:
        return self.last("train_acc")

    @property
    def test_acc(self) -> float | None:
        return self.last("test_acc")

    def metrics(self) -> dict[str, Any]:
        """The ``metrics`` object of a run manifest: the last epoch's measured values (keys
        of values not measured are left out, never null), plus the history.

        ``train_loss``/``train_error`` and ``test_loss``/``test_error`` are eval-mode means
        over the whole set after the last epoch (present when evaluated);
        ``last_epoch_mean_train_loss``/``last_epoch_train_error`` are the means over the
        last epoch's training steps (train mode, weights changing), always present.
        """
        out: dict[str, Any] = {}
        for split in ("train", "test"):
            loss, acc = self.last(f"{split}_loss"), self.last(f"{split}_acc")
            if loss is not None:
                out[f"{split}_loss"] = loss
            if acc is not None:
                out[f"{split}_acc"] = acc
                out[f"{split}_error"] = 1.0 - acc
        running_loss, running_acc = self.last("epoch_mean_train_loss"), self.last("epoch_train_acc")
        if running_loss is not None:
            out["last_epoch_mean_train_loss"] = running_loss
        if running_acc is not None:
            out["last_epoch_train_error"] = 1.0 - running_acc
        return {
            **out,
            "steps": self.steps,
            "chain_steps": self.chain_steps,
            "history": self.history,
        }


class PreBatched(Dataset):
    """Ready-made batches as a Dataset whose items are whole :class:`Batch` objects (load
    it with ``batch_size=None``)."""

    def __init__(self, batches: Sequence[Batch]):
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        return self.batches[i]


def as_batch(item: Batch | Sequence[torch.Tensor]) -> Batch:
    """A loaded item as a :class:`Batch`: a Batch as is, ``(*inputs, labels)`` as
    ``Batch(inputs, labels)`` (one input as a tensor, several as a tuple)."""
    if isinstance(item, Batch):
        return item
    *inputs, labels = item
    return Batch(inputs[0] if len(inputs) == 1 else tuple(inputs), labels)


def as_dataset(data: Dataset | Sequence[torch.Tensor] | Sequence[Batch]) -> Dataset:
    """A Dataset as is; a tuple/list of tensors ``(*inputs, labels)`` as a TensorDataset; a
    list of :class:`Batch` as :class:`PreBatched`."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    if isinstance(data, (tuple, list)) and data and all(isinstance(b, Batch) for b in data):
        return PreBatched(data)
    raise GenboundError(
        "fit: expected a torch Dataset, a tuple of tensors (*inputs, labels) or a list of "
        f"Batch objects; found {type(data).__name__}."
    )


def loader(
    data: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> DataLoader:
    """A DataLoader over ``data`` (whole batches as they are for :class:`PreBatched`)."""
    size = None if isinstance(data, PreBatched) else batch_size
    return DataLoader(data, batch_size=size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | Sequence[torch.Tensor],
    *,
    batch_size: int = 256,
    loss_fn: OutputLoss | None = None,
    forward: Forward | None = None,
) -> tuple[float, float | None]:
    """(mean loss, accuracy) over the examples of ``data``, in eval mode.

    ``loss_fn(outputs, labels)`` returns one loss per example (default: cross-entropy);
    accuracy is None unless the outputs have one more dimension than the labels (class
    logits). Leaves the model in eval mode.
    """
    model.eval()
    seen = SeenByTraining()
    for item in loader(as_dataset(data), batch_size, shuffle=False):
        batch = as_batch(item)
        outputs = (forward or model_outputs)(model, batch)
        seen.add((loss_fn or CLASSES.loss)(outputs, batch.labels), outputs, batch.labels)
    if seen.count == 0:
        raise GenboundError("evaluate: expected at least one example, found an empty dataset.")
    return seen.mean_loss(), seen.accuracy()


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0 over ``warmup_steps``, then linear decay to 0."""

    def mult(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return mult


def fit(
    model_or_handle: nn.Module | AdapterHandle,
    train_data: Dataset | Sequence[torch.Tensor],
    test_data: Dataset | Sequence[torch.Tensor] | None = None,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup: float = 0.06,
    loss_fn: OutputLoss | None = None,
    forward: Forward | None = None,
    chain_every_epochs: int | None = None,
    seed: int = 0,
    trajectory_every: int | None = None,
    eval_train: bool = True,
    eval_batch_size: int = 256,
) -> FitResult:
    """Train with AdamW and a linear warmup/decay schedule; evaluate after every epoch.

    Args:
        model_or_handle: an :class:`AdapterHandle` (its parameter groups, LoRA+ ratio and
            chain schedule are used; a subspace run trains its z, see :data:`SUBSPACE_LR`)
            or a model (its ``requires_grad`` parameters train).
        train_data, test_data: see the module docstring; ``test_data`` may be None.
        epochs, lr, batch_size, weight_decay: the usual; ``warmup`` is a fraction of steps.
        loss_fn: ``loss_fn(outputs, labels) -> per-example losses``
            (:data:`~genbound.tasks.metric.OutputLoss`); default cross-entropy.
        forward: ``forward(model, batch) -> outputs`` (:data:`~genbound.tasks.objective.Forward`,
            ``batch`` a :class:`Batch`) when :func:`~genbound.tasks.objective.model_outputs`
            is not right.
        chain_every_epochs: for chained adapters, reset every E epochs (then the number of
            links, ceil(epochs / E), must equal the handle's k); default: the k - 1 resets
            spread evenly over the steps (:meth:`AdapterHandle.reset_steps`).
        seed: shuffling and dropout draws (the global RNG state is restored on return).
        trajectory_every: with a handle, snapshot the trainable parameters at step 0, every
            this many steps, and at the end (saved by ``handle.save``).
        eval_train: also evaluate on the training set each epoch (eval mode).

    Returns:
        A :class:`FitResult`.
    """
    handle = model_or_handle if isinstance(model_or_handle, AdapterHandle) else None
    model = handle.model if handle else model_or_handle
    if not isinstance(epochs, int) or epochs < 1 or not lr > 0 or batch_size < 1:
        raise GenboundError(
            "fit: expected epochs >= 1, lr > 0 and batch_size >= 1; found "
            f"epochs={epochs!r}, lr={lr!r}, batch_size={batch_size!r}."
        )
    train_set = as_dataset(train_data)
    loss_fn = loss_fn or CLASSES.loss
    forward = forward or model_outputs
    gen = torch.Generator().manual_seed(int(seed))
    batches = loader(train_set, batch_size, shuffle=True, generator=gen)
    steps_per_epoch = len(batches)
    total = epochs * steps_per_epoch
    resets = _reset_steps(handle, chain_every_epochs, epochs, steps_per_epoch, total)

    if handle:
        groups = handle.param_groups(lr, weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": lr, "weight_decay": weight_decay}]
    if not any(g["params"] for g in groups):
        raise GenboundError("fit: expected trainable parameters, found none.")
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, int(warmup * total)))

    result = FitResult()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if handle and trajectory_every:
            handle.snapshot(0)
        step = 0
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            seen = SeenByTraining()
            for item in batches:
                batch = as_batch(item)
                opt.zero_grad(set_to_none=True)
                outputs = forward(model, batch)
                losses = loss_fn(outputs, batch.labels)
                seen.add(losses, outputs, batch.labels)
                losses.mean().backward()
                opt.step()
                sched.step()
                step += 1
                if handle and trajectory_every and (step % trajectory_every == 0 or step == total):
                    handle.snapshot(step)
                if step in resets:
                    for p in handle.chain_step():
                        opt.state.pop(p, None)  # fresh AdamW moments for the new link
                    result.chain_steps.append(step)
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - t0,
                "epoch_mean_train_loss": seen.mean_loss(),
                "epoch_train_acc": seen.accuracy(),
            }
            for key, data in (("train", train_set if eval_train else None), ("test", test_data)):
                if data is None:
                    record[f"{key}_loss"] = record[f"{key}_acc"] = None
                    continue
                lo, acc = evaluate(
                    model, data, batch_size=eval_batch_size, loss_fn=loss_fn, forward=forward
                )
                record[f"{key}_loss"], record[f"{key}_acc"] = lo, acc
            log.info("epoch %d: %s", epoch, record)
            result.history.append(record)
    result.steps = step
    model.eval()
    return result


class SeenByTraining:
    """Running sums of per-example losses and correct predictions (of class logits)."""

    def __init__(self) -> None:
        self.loss, self.correct, self.count, self.classes = 0.0, 0, 0, True

    def add(self, losses: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            self.loss += float(losses.detach().double().sum())
            n = int(labels.shape[0])
            self.count += n
            if outputs.ndim == labels.ndim + 1:
                self.correct += n - int(CLASSES.error(outputs, labels).sum())
            else:
                self.classes = False

    def mean_loss(self) -> float | None:
        return self.loss / self.count if self.count else None

    def accuracy(self) -> float | None:
        return self.correct / self.count if self.count and self.classes else None


def _reset_steps(handle, every, epochs, steps_per_epoch, total) -> set[int]:
    if handle is None or not handle.chained:
        if every is not None:
            raise GenboundError(
                "fit: chain_every_epochs needs a handle of a chained method (cola, rac, c3la, "
                "random_c3la); found "
                + ("a plain model." if handle is None else f"{handle.variant.name!r}.")
            )
        return set()
    k_left = handle.chain - handle.links_done
    if every is None:
        if total < k_left:
            raise GenboundError(
                f"fit: a chain of {k_left} links needs at least {k_left} steps; found {total}."
            )
        return {round(j * total / k_left) for j in range(1, k_left)}
    if not isinstance(every, int) or every < 1 or math.ceil(epochs / every) != k_left:
        raise GenboundError(
            f"fit: chain_every_epochs={every!r} over {epochs} epochs gives "
            f"{math.ceil(epochs / every) if isinstance(every, int) and every > 0 else '?'} links; "
            f"expected the handle's k = {k_left}."
        )
    return {e * steps_per_epoch for e in range(every, epochs, every)}
