"""A seeded random sample of an objective's examples, stratified by label, for analyses
that cannot afford the whole training set (curvature, landscapes).

Tasks bucket their batches by length, and length goes with the label in most text data,
so a run of whole batches is a biased sample. Here each class gets its share of the ``n``
examples by largest remainder (exactly ``n`` in all, each class within one example of
``n`` times its share), drawn uniformly without replacement from a
``numpy.random.default_rng(seed)``. The examples of a class are put in an order fixed by
their content (a hash of each example's label and unpadded inputs) before the draw, so the
sample does not depend on how the examples are batched or in what order the batches come.
The chosen rows are gathered with :func:`genbound.tasks.packing.take_rows`: each is cut
to its own length and re-padded, so its loss is what it was in its own batch.

Targets that are not class labels (floating-point, or more than one per example, as in
regression) have no classes to stratify by: the sample is then ``n`` examples drawn
uniformly without replacement by the same ``numpy.random.default_rng(seed)`` from all
examples, put in the order fixed by their content (each example's target and unpadded
inputs) first, so it too does not depend on the batching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.tasks.objective import Batch, Objective
from genbound.tasks.packing import MAX_TOKENS, take_rows


@dataclass(frozen=True)
class Sample:
    """Which of an objective's examples an analysis used.

    Attributes:
        examples: examples taken.
        total: examples the objective had.
        seed: seed of the draw.
        stratified_by: ``"label"``, or None when every example was taken or the targets
            are not class labels (a uniform sample).
        label_counts: examples taken per class index, ``{label: count}`` (empty when the
            targets are not class labels).
    """

    examples: int
    total: int
    seed: int
    stratified_by: str | None
    label_counts: dict[int, int]

    def describe(self) -> str:
        if self.examples >= self.total:
            return f"all {self.total:,} examples"
        if self.stratified_by is None:
            return (
                f"{self.examples:,} of {self.total:,} examples, a uniform random sample "
                f"(seed {self.seed})"
            )
        return (
            f"{self.examples:,} of {self.total:,} examples, a random sample stratified by "
            f"{self.stratified_by} (seed {self.seed})"
        )


def stratified_counts(
    labels: np.ndarray, n: int, rng: np.random.Generator | None = None
) -> dict[int, int]:
    """Examples per class for a sample of ``n`` (<= len(labels)): n times each class's share,
    rounded by largest remainder so the counts sum to ``n``. Equal remainders (many equal
    classes) are ordered by ``rng`` (none: the smaller label first), so no class is favoured
    for its label."""
    classes, sizes = np.unique(np.asarray(labels), return_counts=True)
    quota = sizes * n / sizes.sum()
    counts = np.floor(quota).astype(int)
    tie = rng.permutation(len(classes)) if rng is not None else np.arange(len(classes))
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - counts[c]), tie[c]))
    for c in order[: n - int(counts.sum())]:
        counts[c] += 1
    return {int(k): int(v) for k, v in zip(classes, counts, strict=True)}


def class_labels(batches: Sequence[Batch]) -> np.ndarray | None:
    """The class labels of every example, in batch order, as a numpy array; None when the
    targets are not class labels (not integer or boolean, or not one per example)."""
    if not all(
        b.labels.dim() == 1 and not (b.labels.is_floating_point() or b.labels.is_complex())
        for b in batches
    ):
        return None
    return torch.cat([b.labels.reshape(-1).cpu() for b in batches]).numpy()


def sample_rows(batches: Sequence[Batch], n: int, seed: int) -> list[tuple[int, int]]:
    """(batch index, row index) of a random sample of ``n`` examples, stratified by class
    label (uniform when the targets are not class labels; see the module docstring); every
    example, in batch order, when there are at most ``n``."""
    rows = [(bi, i) for bi, b in enumerate(batches) for i in range(len(b))]
    if n >= len(rows):
        return rows
    labels = class_labels(batches)
    keys = [_content_key(batches[bi], i, labels is not None) for bi, i in rows]
    rng = np.random.default_rng(int(seed))
    if labels is None:
        members = sorted(range(len(rows)), key=lambda j: (keys[j], j))
        chosen = rng.choice(len(members), size=n, replace=False)
        return [rows[members[j]] for j in np.sort(chosen)]
    picks = []
    ties = np.random.default_rng([int(seed), 1])  # its own stream: the draws stay as they were
    for label, count in stratified_counts(labels, n, ties).items():
        members = sorted(np.flatnonzero(labels == label), key=lambda j: (keys[j], j))
        chosen = rng.choice(len(members), size=count, replace=False)
        picks += [rows[members[j]] for j in np.sort(chosen)]
    return picks


def sample_objective(
    objective: Objective, n: int, *, seed: int, max_tokens: int | None = None
) -> tuple[Objective, Sample]:
    """The objective on a stratified random sample of ``n`` of its examples (all of them
    when it has at most ``n``), repacked (at most ``max_tokens`` padded tokens per batch;
    default :func:`analysis_batch_tokens` of the model), and a record of the sample."""
    if n < 1:
        raise GenboundError(f"the example sample size must be at least 1; found {n}.")
    if seed < 0:
        raise GenboundError(f"the sample's seed must be a non-negative integer; found {seed}.")
    batches = list(objective.batches)
    picks = sample_rows(batches, n, seed)
    total = objective.num_examples
    by_class = class_labels(batches) is not None
    counts: dict[int, int] = {}
    for bi, i in picks if by_class else ():
        label = int(batches[bi].labels[i])
        counts[label] = counts.get(label, 0) + 1
    sample = Sample(
        examples=len(picks),
        total=total,
        seed=int(seed),
        stratified_by="label" if len(picks) < total and by_class else None,
        label_counts=dict(sorted(counts.items())),
    )
    sub = dataclasses.replace(
        objective,
        batches=take_rows(
            batches,
            picks,
            max_tokens=max_tokens
            if max_tokens is not None
            else analysis_batch_tokens(objective.model),
        ),
        description=f"{objective.description}, {sample.describe()}",
    )
    return sub, sample


def analysis_batch_tokens(model) -> int:
    """Padded tokens per batch of a sample that analyses differentiate twice: 1,024
    (:data:`~genbound.tasks.packing.MAX_TOKENS`) up to 300 million parameters, then
    halving as the model grows (a power of two, at least 128). A second-order graph holds
    every layer's activations: on a 1.1B-parameter model in bfloat16 (LoRA on the
    attention), 256 tokens hold 2.9 GiB of them, and a Hessian-vector product over 1,024
    tokens took 14.5 s in batches of 256, 16.3 s in batches of 512 and 30 s in one batch
    (2 cores), at 11, 13 and 23 GiB peak."""
    params = sum(p.numel() for p in model.parameters())
    scaled = MAX_TOKENS * 3e8 / max(params, 1)
    return int(2 ** round(math.log2(min(max(scaled, 128), MAX_TOKENS))))


def _content_key(batch: Batch, i: int, class_label: bool = True) -> bytes:
    """A digest of row ``i``: its label (a class index, or a target tensor's bytes) and
    each input at its attended positions."""
    h = hashlib.blake2b(digest_size=16)
    if class_label:
        h.update(str(int(batch.labels[i])).encode())
    else:
        _update(h, "labels", batch.labels[i], batch.labels.shape[1:])
    inputs = _named_inputs(batch.inputs)
    mask = inputs.get("attention_mask")
    kept = mask[i].bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    length = int(kept.sum()) if kept is not None else None
    right_padded = kept is not None and bool(kept[:length].all())
    for key in sorted(inputs):
        t = inputs[key]
        if not isinstance(t, torch.Tensor):
            continue
        row = t[i]
        if kept is not None and t.dim() >= 2 and t.shape[1] == mask.shape[1]:
            # padding (of whatever width) is not part of the example
            row = row[:length] if right_padded else row[kept]
        _update(h, key, row, t.shape[2:])
    return h.digest()


def _named_inputs(inputs) -> dict:
    """Inputs as a dict: keyword inputs as they are, positional ones by position, a tensor
    under ``""``."""
    if isinstance(inputs, dict):
        return inputs
    if isinstance(inputs, tuple):
        return {str(j): t for j, t in enumerate(inputs)}
    return {"": inputs}


def _update(h, key: str, row: torch.Tensor, trailing: tuple) -> None:
    """Feed one row of one tensor (its name, dtype, trailing shape, size and bytes) to ``h``."""
    row = row.detach().cpu().contiguous().reshape(-1)
    h.update(key.encode())
    h.update(str((row.dtype, tuple(trailing), row.numel())).encode())
    h.update(row.view(torch.uint8).numpy().data)  # no copy of a contiguous row
