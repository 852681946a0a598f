"""Compression bounds for causal language models, per token and per document (Lotfi et al.
2024, "Unlocking tokens as data points for generalization bounds on larger language
models"; Lotfi et al. 2023 for the document level).

The loss bounded is the prediction-smoothed NLL in bits: the model's next-token
distribution p mixed with the uniform one, p' = (1 - a) p + a / V, whose NLL
-log2 p'(x) lies in [f_a, f_a + Delta_a]: f_a = -log2(1 - a + a / V) at p = 1, log2(V / a)
at p = 0, an interval of width Delta_a = log2(1 + (1 - a) V / a). The smoothing level a is chosen from a grid A after
seeing the data, and the quantization b from a set B, both paid by a union bound. The
code length K (bits) of the quantized trained tensors is that of
:mod:`genbound.bounds.compression` (codebooks plus arithmetic-coded indices).

Token level, N = m predicted training tokens (Azuma's inequality over the token sequence:
the martingale argument of Lotfi et al. 2024): with probability >= 1 - delta,

    risk_a <= L_a + Delta_a sqrt((K ln 2 + ln(|B| |A| / delta)) / (2 m))    bits/token
    top-1 error <= E + sqrt((K ln 2 + ln(|B| / delta)) / (2 m))

where L_a and E are the quantized model's token-weighted mean smoothed NLL and top-1 error
on the training tokens. The risk is the expected next-token loss over the training
distribution of contexts (each token given the text before it), not over fresh documents.

Document level, N = n training texts drawn i.i.d., the loss of a text its mean over its
predicted tokens (values in [f_a, f_a + Delta_a]); the kl form (Maurer 2004) of the
compression bound on the loss shifted and scaled onto [0, 1]:

    risk_a <= f_a + Delta_a kl^-1((L_a - f_a) / Delta_a,
                                  (K ln 2 + ln(2 sqrt(n) / delta) + ln(|B| |A|)) / n)

and likewise for the per-text top-1 error rate (range 1, |A| not paid). Each of the four
bounds holds with probability >= 1 - delta on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from genbound.bounds.compression import (
    CodeLength,
    Preamble,
    Quantization,
    code_length,
    quantize,
)
from genbound.bounds.kl import kl_inverse
from genbound.errors import GenboundError

log = logging.getLogger(__name__)

LN2 = math.log(2.0)

#: Smoothing levels a tried (the grid of Lotfi et al. 2024).
ALPHAS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5)
#: Quantization levels b tried (2^b levels).
BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def smoothed_range_bits(alpha: float, vocab_size: int) -> float:
    """Delta_a = log2(1 + (1 - a) V / a), the width of the smoothed NLL's range (bits):
    from f_a (:func:`smoothed_floor_bits`, p = 1) to log2(V / a) (p = 0)."""
    return math.log2(1.0 + (1.0 - alpha) * vocab_size / alpha)


def smoothed_floor_bits(alpha: float, vocab_size: int) -> float:
    """-log2(1 - a + a / V): the smoothed NLL of a token predicted with p = 1 (bits)."""
    return -math.log2(1.0 - alpha + alpha / vocab_size)


@dataclass(frozen=True)
class TrainScores:
    """What a quantized model scores on the training texts.

    Attributes:
        tokens: m, predicted training tokens.
        texts: n, training texts.
        smoothed_bits: per smoothing level (the bound's ``alphas``), the token-weighted
            mean smoothed NLL, bits/token.
        error: token-weighted top-1 error.
        doc_smoothed_bits: per smoothing level, the mean over texts of each text's mean
            smoothed NLL, bits/token.
        doc_error: the mean over texts of each text's top-1 error rate.
    """

    tokens: int
    texts: int
    smoothed_bits: tuple[float, ...]
    error: float
    doc_smoothed_bits: tuple[float, ...]
    doc_error: float


@dataclass(frozen=True)
class LevelBound:
    """One bound at its best (b, a): the value, the training loss it starts from, the
    complexity term added, and the choice."""

    bound: float
    train: float
    complexity: float
    bits: int
    alpha: float | None
    vacuous_at: float

    @property
    def vacuous(self) -> bool:
        return self.bound >= self.vacuous_at


@dataclass(frozen=True)
class TokenCandidate:
    """One quantization b: its code length and, when evaluated, its training scores.

    ``floor`` is the smallest token-level smoothed-NLL bound any training loss could give
    at this K; a candidate that cannot beat the best bounds found so far on any of the
    four bounds is not evaluated (``scores`` None)."""

    bits: int
    code_bits: int
    code: CodeLength
    quantization: Quantization
    scores: TrainScores | None


@dataclass(frozen=True)
class TokenBoundResult:
    """The token- and document-level bounds of a causal LM, with their inputs.

    Attributes:
        token_bits: the smoothed NLL bound per token (bits/token), N = m tokens.
        token_error: the top-1 next-token error bound, N = m tokens.
        doc_bits: the smoothed NLL bound (bits/token, averaged per text), N = n texts.
        doc_error: the per-text top-1 error rate bound, N = n texts.
        n_tokens, n_texts: m and n.
        vocab_size: V.
        delta: each bound holds with probability >= 1 - delta.
        alphas, candidates: the grids searched (every candidate's K and scores).
        assumptions, warnings.
    """

    token_bits: LevelBound
    token_error: LevelBound
    doc_bits: LevelBound
    doc_error: LevelBound
    n_tokens: int
    n_texts: int
    vocab_size: int
    delta: float
    alphas: tuple[float, ...]
    candidates: tuple[TokenCandidate, ...]
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def chosen(self) -> TokenCandidate:
        """The candidate of the token-level smoothed NLL bound."""
        return next(c for c in self.candidates if c.bits == self.token_bits.bits)

    @property
    def quantized(self) -> dict[str, torch.Tensor]:
        return self.chosen.quantization.tensors()


def token_complexity(code_bits: int, m: int, delta: float, choices: int) -> float:
    """sqrt((K ln 2 + ln(choices / delta)) / (2 m)): the token-level term per unit range."""
    return math.sqrt((code_bits * LN2 + math.log(choices / delta)) / (2.0 * m))


def document_rhs(code_bits: int, n: int, delta: float, choices: int) -> float:
    """(K ln 2 + ln(2 sqrt(n) / delta) + ln(choices)) / n nats: the document-level kl
    bound's right-hand side."""
    return (code_bits * LN2 + math.log(2.0 * math.sqrt(n) / delta) + math.log(choices)) / n


def _bounds_of(
    s: TrainScores, k: int, b: int, v: int, alphas: Sequence[float], delta: float, nb: int
) -> tuple[LevelBound, LevelBound, LevelBound, LevelBound]:
    """The four bounds of one candidate (best a for the smoothed ones)."""
    na = len(alphas)
    top = math.log2(v)
    tok_c = token_complexity(k, s.tokens, delta, nb * na)
    tok = min(
        (
            LevelBound(
                s.smoothed_bits[i] + smoothed_range_bits(a, v) * tok_c,
                s.smoothed_bits[i],
                smoothed_range_bits(a, v) * tok_c,
                b,
                a,
                top,
            )
            for i, a in enumerate(alphas)
        ),
        key=lambda x: x.bound,
    )
    err_c = token_complexity(k, s.tokens, delta, nb)
    tok_err = LevelBound(s.error + err_c, s.error, err_c, b, None, 1.0)
    rhs = document_rhs(k, s.texts, delta, nb * na)
    docs = []
    for i, a in enumerate(alphas):
        width, low = smoothed_range_bits(a, v), smoothed_floor_bits(a, v)
        train = min(max(s.doc_smoothed_bits[i], low), low + width)
        bound = low + width * kl_inverse((train - low) / width, rhs)
        docs.append(LevelBound(bound, s.doc_smoothed_bits[i], bound - train, b, a, top))
    doc = min(docs, key=lambda x: x.bound)
    e = min(max(s.doc_error, 0.0), 1.0)
    erhs = document_rhs(k, s.texts, delta, nb)
    derr = kl_inverse(e, erhs)
    doc_err = LevelBound(derr, s.doc_error, derr - e, b, None, 1.0)
    return tok, tok_err, doc, doc_err


def _floors(k: int, m: int, n: int, v: int, alphas, delta: float, nb: int) -> tuple[float, ...]:
    """The four bounds with the best training scores possible (each token predicted with
    p = 1): no candidate of code length k can go below them."""
    best = TrainScores(
        m,
        n,
        tuple(smoothed_floor_bits(a, v) for a in alphas),
        0.0,
        tuple(smoothed_floor_bits(a, v) for a in alphas),
        0.0,
    )
    return tuple(x.bound for x in _bounds_of(best, k, 0, v, alphas, delta, nb))


def token_level_bound(
    tensors: Mapping[str, torch.Tensor],
    evaluate: Callable[[Mapping[str, torch.Tensor]], TrainScores],
    *,
    vocab_size: int,
    bits: Sequence[int] = BITS,
    alphas: Sequence[float] = ALPHAS,
    delta: float = 0.05,
    codebook: str = "shared",
    preamble: Preamble | None = None,
    assumptions: Sequence[str] = (),
) -> TokenBoundResult:
    """The token- and document-level compression bounds (see the module docstring).

    Args:
        tensors: the trained tensors (name -> tensor), quantized per candidate b.
        evaluate: the quantized tensors (name -> float32) -> the model's
            :class:`TrainScores` on the training texts, smoothed at ``alphas`` in order.
            Candidates are tried in order of code length; one that cannot beat the best
            bounds found so far on any of the four bounds is not evaluated (the result is
            unchanged).
        vocab_size: V.
        bits, alphas: the grids (both paid by a union bound).
        delta: each bound holds with probability >= 1 - delta.
        codebook, preamble: see :func:`genbound.bounds.compression.quantize` and
            :func:`~genbound.bounds.compression.code_length`.
    """
    v = int(vocab_size)
    if v < 2:
        raise GenboundError(f"token-level bound: vocab_size must be >= 2; found {vocab_size!r}.")
    if not 0.0 < delta < 1.0:
        raise GenboundError(f"token-level bound: delta must lie in (0, 1); found {delta!r}.")
    alphas = tuple(float(a) for a in alphas)
    if not alphas or not all(0.0 < a < 1.0 for a in alphas):
        raise GenboundError(
            f"token-level bound: smoothing levels must lie in (0, 1); found {list(alphas)}."
        )
    cands = list(dict.fromkeys(int(b) for b in bits))
    if not cands:
        raise GenboundError("token-level bound: expected at least one candidate b; found none.")
    nb = len(cands)
    coded = []
    for b in cands:
        q = quantize(tensors, b, codebook=codebook)
        coded.append((b, q, code_length(q, preamble)))
    coded.sort(key=lambda x: (x[2].total_bits, x[0]))
    best: list[LevelBound | None] = [None, None, None, None]
    by_b: dict[int, TokenCandidate] = {}
    m = n = None
    for b, q, code in coded:
        k = code.total_bits
        if m is not None and all(
            f >= cur.bound
            for f, cur in zip(_floors(k, m, n, v, alphas, delta, nb), best, strict=True)
        ):
            log.debug("token-level bound: b=%d pruned", b)
            by_b[b] = TokenCandidate(b, k, code, q, None)
            continue
        s = evaluate(q.tensors())
        if len(s.smoothed_bits) != len(alphas) or len(s.doc_smoothed_bits) != len(alphas):
            raise GenboundError(
                f"token-level bound: expected scores at {len(alphas)} smoothing levels; found "
                f"{len(s.smoothed_bits)} and {len(s.doc_smoothed_bits)}."
            )
        if s.tokens < 1 or s.texts < 1:
            raise GenboundError(
                f"token-level bound: expected training tokens and texts; found {s.tokens} "
                f"tokens in {s.texts} texts."
            )
        m, n = s.tokens, s.texts
        by_b[b] = TokenCandidate(b, k, code, q, s)
        for i, x in enumerate(_bounds_of(s, k, b, v, alphas, delta, nb)):
            if best[i] is None or (x.bound, x.bits) < (best[i].bound, best[i].bits):
                best[i] = x
    tok, tok_err, doc, doc_err = best
    warns = tuple(
        f"{name} {x.bound:.4g} >= {x.vacuous_at:.4g}: vacuous (reported as is)"
        for name, x in (
            ("token-level smoothed NLL bound", tok),
            ("token-level top-1 error bound", tok_err),
            ("document-level smoothed NLL bound", doc),
            ("document-level top-1 error bound", doc_err),
        )
        if x.vacuous
    )
    assumptions = (
        *assumptions,
        "token level: N = the m predicted training tokens; Azuma's inequality over the token "
        "sequence (the martingale argument of Lotfi et al. 2024) bounds the expected "
        "next-token loss given the preceding text under the training distribution, not the "
        "loss on fresh documents",
        "document level: N = the n training texts, i.i.d. draws; a text's loss is its mean "
        "over its predicted tokens",
        "the loss is the prediction-smoothed NLL -log2((1 - a) p + a / V) in bits, in "
        "[-log2(1 - a + a / V), log2(V / a)], a range of width log2(1 + (1 - a) V / a); a chosen from the grid "
        f"{list(alphas)} and b from {cands}, paid by a union bound",
        "the scores are those of the quantized model (the decoded code) on the training texts",
        "prior P(h) = 2^(-K(h)) over a prefix code: the base model, architecture, tensor "
        "names and shapes, the seed, frozen factors and the grids cost 0 bits",
        "each of the four bounds holds with probability >= 1 - delta on its own",
    )
    return TokenBoundResult(
        token_bits=tok,
        token_error=tok_err,
        doc_bits=doc,
        doc_error=doc_err,
        n_tokens=int(m),
        n_texts=int(n),
        vocab_size=v,
        delta=float(delta),
        alphas=alphas,
        candidates=tuple(by_b[b] for b in cands),
        assumptions=assumptions,
        warnings=warns,
    )
