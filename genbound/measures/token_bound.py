"""``token_bound``: a causal language model's compression bounds per token and per
document (Lotfi et al. 2024), on the prediction-smoothed NLL and the top-1 error.

Needs a causal-LM task: the quantized trained tensors are scored on the task's whole
training set. ``report.json``: ``bounds.token_level`` with every input needed to check the
numbers by hand (see :mod:`genbound.bounds.token_level` for the formulas); the quantized
tensors of the token-level bound's b are written as ``quantized.safetensors``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.compression import QUANTIZED_FILE
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.bounds.token_level import LevelBound, TokenBoundResult

_KEYS = ("token_bits", "token_error", "doc_bits", "doc_error")


def _level(x: LevelBound) -> dict:
    return {
        "bound": x.bound,
        "train": x.train,
        "complexity": x.complexity,
        "bits": x.bits,
        "alpha": x.alpha,
        "vacuous_at": x.vacuous_at,
        "vacuous": x.vacuous,
    }


def token_bound_json(r: TokenBoundResult | None) -> dict | None:
    """The bounds with every input needed to check them by hand."""
    if r is None:
        return None
    from genbound.bounds.token_level import smoothed_range_bits

    cands = []
    for c in r.candidates:
        s = c.scores
        cands.append(
            {
                "bits": c.bits,
                "code_bits": c.code_bits,
                "evaluated": s is not None,
                "train_smoothed_bits": list(s.smoothed_bits) if s else None,
                "train_error": s.error if s else None,
                "train_doc_smoothed_bits": list(s.doc_smoothed_bits) if s else None,
                "train_doc_error": s.doc_error if s else None,
            }
        )
    return {
        **{k: _level(getattr(r, k)) for k in _KEYS},
        "n_tokens": r.n_tokens,
        "n_texts": r.n_texts,
        "vocab_size": r.vocab_size,
        "delta": r.delta,
        "alphas": list(r.alphas),
        "loss_ranges_bits": [smoothed_range_bits(a, r.vocab_size) for a in r.alphas],
        "num_bit_candidates": len(r.candidates),
        "candidates": cands,
        "loss_unit": "bits/token",
        "quantized_tensors": QUANTIZED_FILE,
        "assumptions": list(r.assumptions),
        "warnings": list(r.warnings),
    }


class TokenBound(Measure):
    name = "token_bound"
    description = "a causal LM's compression bounds per token and per document"
    needs_task = True
    section = "compression"
    scalars: ClassVar[dict[str, Scalar]] = {
        "token_bound_bits": Scalar(
            lambda d: number(get(d, "bounds", "token_level", "token_bits", "bound")),
            "token-level bound on the smoothed NLL",
            lambda d: number(get(d, "bounds", "token_level", "token_bits", "vacuous_at")),
            "log2 V, the uniform predictor's loss",
            unit="bits/token",
        ),
        "token_error_bound": Scalar(
            lambda d: number(get(d, "bounds", "token_level", "token_error", "bound")),
            "token-level bound on the top-1 next-token error",
            lambda d: number(get(d, "bounds", "token_level", "token_error", "vacuous_at")),
            "1",
        ),
        "document_bound_bits": Scalar(
            lambda d: number(get(d, "bounds", "token_level", "doc_bits", "bound")),
            "document-level bound on the smoothed NLL",
            lambda d: number(get(d, "bounds", "token_level", "doc_bits", "vacuous_at")),
            "log2 V, the uniform predictor's loss",
            unit="bits/token",
        ),
    }

    def compute(self, ctx) -> TokenBoundResult | None:
        from genbound.bounds.evaluated import token_bound_on

        train, _ = ctx.objectives()
        if train.metric.vocab_size is None:
            return None  # not a language model: the compression measure bounds it
        return token_bound_on(ctx.checkpoint, train)

    def json(self, result, ckpt) -> dict:
        return {("bounds", "token_level"): token_bound_json(result)}

    def markdown(self, result: TokenBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        r = result
        lines = [
            "",
            "## Token- and document-level bounds (compression, Lotfi et al. 2024)",
            "",
            f"The quantized trained tensors cost K = {r.chosen.code_bits:,} bits (b = "
            f"{r.chosen.bits}); each bound holds with probability >= {1 - r.delta:g} on its "
            f"own. Losses are the prediction-smoothed NLL in bits/token, p' = (1 - a) p + a / "
            f"V with V = {r.vocab_size:,}; log2 V = {math.log2(r.vocab_size):.3f} bits is what "
            "the uniform predictor scores.",
            "",
            "| bound | N | quantized train | + complexity | bound | a | b | vacuous at |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = (
            ("smoothed NLL, token level (bits/token)", f"{r.n_tokens:,} tokens", r.token_bits),
            ("top-1 error, token level", f"{r.n_tokens:,} tokens", r.token_error),
            ("smoothed NLL, document level (bits/token)", f"{r.n_texts:,} texts", r.doc_bits),
            ("top-1 error rate, document level", f"{r.n_texts:,} texts", r.doc_error),
        )
        for name, n, x in rows:
            lines.append(
                f"| {name} | {n} | {format_number(x.train)} | {format_number(x.complexity)} | "
                f"**{format_number(x.bound)}**{' (vacuous)' if x.vacuous else ''} | "
                f"{'' if x.alpha is None else f'{x.alpha:g}'} | {x.bits} | "
                f"{format_number(x.vacuous_at)} |"
            )
        lines += [
            "",
            "The token-level bounds rest on a martingale argument over the token sequence "
            "(Azuma's inequality, Lotfi et al. 2024): they bound the expected next-token loss "
            "of a context drawn from the training distribution, with N the number of "
            "predicted training tokens, not the loss on fresh documents. The document-level "
            "bounds treat the training texts as i.i.d. draws (N = texts).",
        ]
        gap = measures.gap
        if gap is not None:
            test_bits = gap.test.loss / math.log(2.0)
            lines.append(
                f"Measured on the test texts (unquantized, unsmoothed): cross-entropy "
                f"{format_number(test_bits)} bits/token ({format_number(gap.test.loss)} nats), "
                f"top-1 error {format_number(gap.test.error)}."
            )
        return lines

    def reading(self, result: TokenBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        r = result
        tb, te = r.token_bits, r.token_error
        if not tb.vacuous:
            return [
                f"The token-level bound is non-vacuous: the smoothed next-token loss is at "
                f"most {format_number(tb.bound)} bits/token (the uniform predictor scores "
                f"{format_number(tb.vacuous_at)}), from {r.n_tokens:,} training tokens paying "
                f"for K = {r.chosen.code_bits:,} bits; the top-1 error bound is "
                f"{format_number(te.bound)}{' (vacuous)' if te.vacuous else ''}."
            ]
        return [
            f"The token-level bound ({format_number(tb.bound)} bits/token) is vacuous, at or "
            f"above log2 V = {format_number(tb.vacuous_at)}: the trained tensors cost "
            f"{r.chosen.code_bits:,} bits after quantization against {r.n_tokens:,} training "
            f"tokens (the complexity term adds {format_number(tb.complexity)} bits/token). "
            "More tokens, fewer trained parameters (a subspace run), or a coarser code "
            "would be needed."
        ]

    def write_files(self, result: TokenBoundResult, folder: Path) -> None:
        from genbound.io import save_tensors

        tensors = {k: v.contiguous() for k, v in result.quantized.items()}
        save_tensors(tensors, folder / QUANTIZED_FILE)

    def log_values(self, result: TokenBoundResult, *, per_layer: bool, intruder_eps: float):
        return {
            "token_bound_bits": result.token_bits.bound,
            "token_error_bound": result.token_error.bound,
            "document_bound_bits": result.doc_bits.bound,
        }


register_measure(TokenBound())
