"""Bounds that need the model run on its training data (the compression PAC-Bayes bound,
and a causal LM's token- and document-level bounds)."""

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
from genbound.bounds.token_level import ALPHAS, TokenBoundResult, TrainScores, token_level_bound
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError
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


def lm_train_scores(
    train: Objective,
    checkpoint: Checkpoint,
    tensors: Mapping[str, torch.Tensor],
    alphas: Sequence[float],
) -> TrainScores:
    """A causal LM's :class:`~genbound.bounds.token_level.TrainScores` on ``train`` with the
    checkpoint's trained tensors replaced by ``tensors`` (the objective's scorer must give
    token losses: :class:`~genbound.tasks.causal_lm.LMScorer`). The model is restored
    bit-exact afterwards."""
    scorer = train.score
    if not callable(getattr(scorer, "token_losses", None)):
        raise GenboundError(
            f"{train.description or 'objective'}: the token-level bound needs a causal language "
            "model's objective (a scorer with token_losses); found "
            f"{type(scorer).__name__}."
        )
    loss_sums, errors, tokens = [], [], []
    with preserved_state(train.model, parameters=True), torch.no_grad():
        load_updates_into(train.model, with_trainable_tensors(checkpoint, tensors))
        train.model.eval()
        for batch in train.batches:
            t = scorer.token_losses(train.model, batch, smoothing=alphas)
            loss_sums.append(t.smoothed_bits_sum.cpu())
            errors.append(t.error_sum.cpu())
            tokens.append(t.tokens.cpu().to(torch.float64))
    bits = torch.cat(loss_sums)  # (n, A)
    err = torch.cat(errors)
    tok = torch.cat(tokens)
    m = float(tok.sum())
    return TrainScores(
        tokens=int(m),
        texts=int(tok.shape[0]),
        smoothed_bits=tuple(float(x) for x in bits.sum(0) / m),
        error=float(err.sum() / m),
        doc_smoothed_bits=tuple(float(x) for x in (bits / tok[:, None]).mean(0)),
        doc_error=float((err / tok).mean()),
    )


def token_bound_on(
    checkpoint: Checkpoint,
    train: Objective,
    *,
    alphas: Sequence[float] = ALPHAS,
    delta: float = 0.05,
) -> TokenBoundResult:
    """The token- and document-level compression bounds of a causal LM ``checkpoint``,
    its quantized scores measured on ``train`` (the whole training set)."""
    vocab = train.metric.vocab_size
    if vocab is None:
        raise GenboundError(
            f"{train.description or 'objective'}: the token-level bound is for causal language "
            f"models; found the metric {train.metric.name!r}."
        )
    preamble, assumptions = subspace_code_terms(checkpoint)
    return token_level_bound(
        trainable_tensors(checkpoint),
        lambda q: lm_train_scores(train, checkpoint, q, alphas),
        vocab_size=vocab,
        alphas=alphas,
        delta=delta,
        codebook=codebook_mode(checkpoint),
        preamble=preamble,
        assumptions=assumptions,
    )
