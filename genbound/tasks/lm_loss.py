"""Next-token cross-entropy and top-1 error of a causal language model, per text, computed
a chunk of tokens at a time.

Position t of a text predicts its token t + 1: the first token of a text is never
predicted, and a target counts only where ``loss_mask`` is true (padding never counts; a
prompt's tokens are masked when only the response is scored). The logits of a large batch
(tokens x vocabulary, e.g. 65,536 x 32,000 floats = 8 GiB) are never held at once: the
output layer runs on ``chunk_tokens`` predicted positions at a time, and only the
per-token loss and error are kept. Under autograd each chunk's logits stay in the graph
until backward, as for an unchunked loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from genbound.errors import GenboundError

#: Predicted positions per chunk by default (with V = 32,000: 0.5 GiB of float32 logits).
CHUNK_TOKENS = 4096


@dataclass(frozen=True)
class TokenLosses:
    """Per text: the summed next-token loss and error over its predicted tokens.

    Attributes:
        loss_sum: (B,) float64, summed cross-entropy (nats) over the text's predicted tokens.
        error_sum: (B,) float64, number of predicted tokens whose top-1 prediction is wrong.
        tokens: (B,) int64, predicted tokens per text (0 for a text with nothing to predict).
        smoothed_bits_sum: (B, A) float64, per smoothing level a of ``smoothing``: the
            summed -log2((1 - a) p + a / V) over the text's predicted tokens, p the
            probability of the right token (bits); (B, 0) without smoothing levels.
    """

    loss_sum: torch.Tensor
    error_sum: torch.Tensor
    tokens: torch.Tensor
    smoothed_bits_sum: torch.Tensor | None = None


def next_token_losses(
    hidden: torch.Tensor,
    output_layer: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    chunk_tokens: int = CHUNK_TOKENS,
    smoothing: Sequence[float] = (),
) -> TokenLosses:
    """Next-token losses of each text from the final hidden states.

    Args:
        hidden: (B, T, H) the model's final hidden states (before the output layer).
        output_layer: maps (n, H) hidden states to (n, V) logits (the LM head).
        input_ids: (B, T) int64 token ids.
        loss_mask: (B, T) bool or 0/1: which tokens count as targets (position 0 never
            does: nothing predicts it).
        chunk_tokens: predicted positions per call of ``output_layer``.
        smoothing: levels a in (0, 1] of the prediction-smoothed NLL to sum as well
            (``smoothed_bits_sum``), from the same logits.

    Returns:
        :class:`TokenLosses`; ``loss_sum`` keeps the graph to ``hidden`` and the output
        layer's parameters when grad is enabled (float64 sums of token losses computed in the logits' precision, at least float32).
    """
    if (
        hidden.ndim != 3
        or input_ids.shape != hidden.shape[:2]
        or loss_mask.shape != input_ids.shape
    ):
        raise GenboundError(
            "next-token losses: expected hidden (B, T, H), input_ids (B, T) and loss_mask "
            f"(B, T); found {tuple(hidden.shape)}, {tuple(input_ids.shape)} and "
            f"{tuple(loss_mask.shape)}."
        )
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise GenboundError(
            f"next-token losses: chunk_tokens must be a positive integer; found {chunk_tokens!r}."
        )
    alphas = torch.tensor([float(a) for a in smoothing], dtype=torch.float64)
    if not bool(((alphas > 0) & (alphas <= 1)).all()):
        raise GenboundError(
            f"next-token losses: smoothing levels must lie in (0, 1]; found {list(smoothing)}."
        )
    b = hidden.shape[0]
    targets_mask = loss_mask[:, 1:].bool()
    text, pos = targets_mask.nonzero(as_tuple=True)  # predicted positions, text-major order
    rows = hidden[:, :-1][text, pos]  # (M, H): the states that predict them
    targets = input_ids[:, 1:][text, pos]  # (M,)
    loss_sum = torch.zeros(b, dtype=torch.float64, device=hidden.device)
    error_sum = torch.zeros(b, dtype=torch.float64, device=hidden.device)
    smoothed = torch.zeros((b, len(alphas)), dtype=torch.float64, device=hidden.device)
    alphas = alphas.to(hidden.device)
    for start in range(0, int(targets.shape[0]), chunk_tokens):
        stop = start + chunk_tokens
        logits = output_layer(rows[start:stop])  # (c, V)
        if logits.dtype.itemsize < 4:  # half precision: the softmax in float32
            logits = logits.float()
        target = targets[start:stop]
        losses = torch.logsumexp(logits, dim=-1) - logits.gather(1, target[:, None])[:, 0]
        wrong = (logits.detach().argmax(dim=-1) != target).double()
        loss_sum = loss_sum.index_add(0, text[start:stop], losses.double())
        error_sum = error_sum.index_add(0, text[start:stop], wrong)
        if len(alphas):
            p = torch.exp(-losses.detach().double())[:, None]  # (c, 1)
            v = logits.shape[-1]
            bits = -torch.log2((1.0 - alphas) * p + alphas / v)  # (c, A)
            smoothed = smoothed.index_add(0, text[start:stop], bits)
    tokens = targets_mask.sum(dim=1).to(torch.int64)
    return TokenLosses(loss_sum, error_sum, tokens, smoothed)
