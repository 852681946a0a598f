"""Bounds that need the model run on its training data (the compression PAC-Bayes bound)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from genbound.bounds.compression import (
    CompressionBoundResult,
    Preamble,
    compression_bound,
    elias_gamma_bits,
    trainable_tensors,
    with_trainable_tensors,
)
from genbound.checkpoint.model import Checkpoint
from genbound.gap import mean_error
from genbound.tasks.objective import Objective
from genbound.tasks.rebuild import load_updates_into
from genbound.tasks.state import preserved_state


def train_error_with(
    train: Objective, checkpoint: Checkpoint, tensors: Mapping[str, torch.Tensor]
) -> float:
    """Mean error (the objective's metric: 0-1 for classification) over ``train`` with the
    checkpoint's trained tensors replaced by ``tensors``.

    The objective's model is restored bit-exact afterwards.
    """
    with preserved_state(train.model, parameters=True):
        load_updates_into(train.model, with_trainable_tensors(checkpoint, tensors))
        return mean_error(train)


def codebook_mode(checkpoint: Checkpoint) -> str:
    """``"per_tensor"`` for a chained subspace run (one codebook per link's z: each link is
    trained, and quantized, on its own), else ``"shared"``. Fixed by the run's structure
    before the data is seen, so it costs nothing."""
    sub = checkpoint.subspace
    return "per_tensor" if sub is not None and sub.links > 1 else "shared"


def subspace_code_terms(checkpoint: Checkpoint) -> tuple[Preamble | None, tuple[str, ...]]:
    """What the code of a subspace run adds: a preamble stating d (Elias gamma code, so d
    may be chosen after seeing the data), and the assumptions it rests on. ``(None, ())``
    for any other checkpoint."""
    sub = checkpoint.subspace
    if sub is None:
        return None, ()
    bits = elias_gamma_bits(sub.d)
    preamble = Preamble(bits, f"d = {sub.d:,} in {bits} bits (Elias gamma code)")
    assumptions = (
        f"subspace run: the code is z (d = {sub.d:,} per link, {sub.links} link(s)), the "
        f"trained tensors being theta_0 + P z over D = {sub.D:,} scalars; theta_0 (the "
        f"initial factors and head) and P ({sub.kind}, seed {sub.seed}) follow from the "
        "seed and cost 0 bits",
        "the variant, rank, targets, chain length, projection kind and seed were fixed before "
        "training (choosing among M configurations after seeing the data costs ln M nats: "
        "see the sweep comparison's union-bounded column)",
    )
    return preamble, assumptions


def compression_bound_on(
    checkpoint: Checkpoint,
    train: Objective,
    *,
    n_train: int | None = None,
    bits: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    delta: float = 0.05,
    num_classes: int | None = None,
    prune: bool = True,
    measured_error: float | None = None,
) -> CompressionBoundResult:
    """The compression bound of ``checkpoint``, its quantized train error measured on ``train``.

    ``train`` must be the objective over the whole training set of N units (N from
    ``n_train``, else the objective's size). The error, its range and its chance level come
    from ``train.metric``; ``num_classes`` (a 0-1 error only) overrides the chance level
    with 1 - 1/num_classes. ``measured_error``: the checkpoint's own error on ``train``,
    already measured (the gap's): a candidate that decodes the checkpoint exactly (a
    quantization-aware subspace run's z at its b) uses it instead of evaluating again.
    """
    n = n_train if n_train is not None else train.num_examples
    metric = train.metric
    preamble, assumptions = subspace_code_terms(checkpoint)
    coded = trainable_tensors(checkpoint)
    return compression_bound(
        coded,
        lambda q: train_error_with(train, checkpoint, q),
        n,
        bits=bits,
        codebook=codebook_mode(checkpoint),
        delta=delta,
        num_classes=num_classes,
        prune=prune,
        error_range=metric.error_range,
        chance=metric.chance,
        error_name=metric.error_name,
        preamble=preamble,
        assumptions=assumptions,
        measured=None if measured_error is None else (coded, measured_error),
    )
