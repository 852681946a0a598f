"""``compression``: the compression PAC-Bayes bound (Lotfi et al. 2022) on the test error.

Needs a task: the quantized trainable tensors' training error is measured on the task's
whole training set. ``report.json``: ``bounds.compression`` with every input needed to check
it by hand; the chosen candidate's quantized tensors are written as
``quantized.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, integer, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.bounds.compression import CompressionBoundResult

QUANTIZED_FILE = "quantized.safetensors"


def compression_json(c: CompressionBoundResult | None) -> dict | None:
    """The bound with every input needed to check it by hand."""
    from genbound.report.serialize import jsonable

    if c is None:
        return None
    cands = []
    for cand in c.candidates:
        q = cand.quantization
        cands.append(
            {
                "bits": cand.bits,
                "code_bits": cand.code_bits,
                "rhs_nats": cand.rhs,
                "floor": cand.floor,
                "evaluated": cand.evaluated,
                "train_error": cand.train_error,
                "bound": cand.bound,
                "preamble_bits": cand.code.preamble.bits if cand.code.preamble else 0,
                "codebook_mode": q.mode,
                "codebook_float_bits": q.codebook_bits,
                "codebooks": [cb.tolist() for cb in q.codebooks],
                "parts": [
                    jsonable(p, skip=frozenset({"counts"})) | {"counts": p.counts.tolist()}
                    for p in cand.code.parts
                ],
            }
        )
    return {
        "bound": c.bound,
        "chosen_bits": c.chosen_bits,
        "code_bits": c.code_bits,
        "train_error": c.train_error,
        "rhs_nats": c.rhs,
        "n_train": c.n_train,
        "delta": c.delta,
        "num_candidates": c.num_candidates,
        "vacuous_at": c.vacuous_at,
        "vacuous": c.vacuous,
        "error_name": c.error_name,
        "error_range": c.error_range,
        "chance": c.chance,
        "quantized_tensors": QUANTIZED_FILE,
        "code": c.chosen.code.description,
        "preamble": jsonable(c.preamble),
        "candidates": cands,
        "assumptions": list(c.assumptions),
        "warnings": list(c.warnings),
    }


def _error_format(c: CompressionBoundResult):
    """How the bound's errors are printed: as probabilities for an error in [0, 1] (never
    rounded onto 0 or 1), else as numbers."""
    from genbound.numbers import format_number, format_probability

    return format_probability if getattr(c, "error_range", 1.0) == 1.0 else format_number


class Compression(Measure):
    name = "compression"
    description = "the compression PAC-Bayes bound on the test error"
    needs_task = True
    after = ("gap",)  # its train error serves a candidate that decodes the checkpoint as is
    section = "compression"
    scalars: ClassVar[dict[str, Scalar]] = {
        "compression_bound": Scalar(
            lambda d: number(get(d, "bounds", "compression", "bound")),
            "compression bound on test error",
            lambda d: number(get(d, "bounds", "compression", "vacuous_at")),
            "chance level (1 - 1/classes for the 0-1 error)",
        ),
        "compression_bits": Scalar(
            lambda d: integer(get(d, "bounds", "compression", "code_bits")),
            "K, bits of the compressed update",
            unit="bits",
        ),
    }

    def compute(self, ctx) -> CompressionBoundResult:
        from genbound.bounds.evaluated import compression_bound_on
        from genbound.errors import GenboundError

        train, _ = ctx.objectives()
        if train.metric.vocab_size is not None:
            raise GenboundError(
                "a causal language model's compression bounds are stated per token and per "
                "document: see token_bound"
            )
        gap = ctx.results.get("gap")
        return compression_bound_on(
            ctx.checkpoint,
            train,
            num_classes=getattr(ctx.task, "num_labels", None),
            measured_error=gap.train.error if gap is not None else None,
        )

    def json(self, result, ckpt) -> dict:
        return {("bounds", "compression"): compression_json(result)}

    def markdown(self, result: CompressionBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        c = result
        prob = _error_format(c)
        verdict = "vacuous" if c.vacuous else "non-vacuous"
        lines = [
            "",
            "## Compression bound (PAC-Bayes, Lotfi et al. 2022)",
            "",
            f"With probability >= {1 - c.delta:g} over the {c.n_train:,} training examples, "
            f"the test {getattr(c, 'error_name', '0-1 error')} of the quantized model is at most **{prob(c.bound)}** "
            f"({verdict}: chance level is {prob(c.vacuous_at)}). Chosen: b = {c.chosen_bits} "
            f"bits per index ({2**c.chosen_bits:,} levels), K = {c.code_bits:,} bits, "
            f"quantized train error {prob(c.train_error)}, kl bound rhs = "
            f"{format_number(c.rhs)} nats.",
        ]
        preamble = getattr(c, "preamble", None)
        if preamble is not None:
            lines.append(
                f"The code states {preamble.description}, then the codebook(s) and the "
                "quantized z (`quantized.safetensors`); the decoded model is theta_0 + P z, "
                "theta_0 and P following from the seed. This assumes the variant, rank, "
                "targets, d and seed were fixed before training (a sweep's certificates pay "
                "ln M nats for choosing among M configurations)."
            )
        if measures.gap is not None:
            test = measures.gap.test.error
            lines.append(
                f"The unquantized model's measured test error is {prob(test)}: the bound is "
                f"{prob(c.bound - test)} above it."
            )
        lines += [
            "",
            "| b | K (bits) | train error (quantized) | rhs (nats) | bound | zero-error floor |",
            "|---|---|---|---|---|---|",
        ]
        for cand in c.candidates:
            err = prob(cand.train_error) if cand.evaluated else "not evaluated (floor too high)"
            lines.append(
                f"| {cand.bits} | {cand.code_bits:,} | {err} | {format_number(cand.rhs)} | "
                f"{prob(cand.bound)} | {prob(cand.floor)} |"
            )
        return lines

    def reading(self, result: CompressionBoundResult, measures) -> list[str]:
        c, g = result, measures.gap
        prob = _error_format(c)
        if not c.vacuous:
            extra = ""
            if g is not None:
                extra = (
                    f" The measured test error is {prob(g.test.error)}, so the bound is "
                    f"{prob(c.bound - g.test.error)} above it."
                )
            return [
                f"The compression bound is non-vacuous: with probability >= {1 - c.delta:g}, "
                f"the quantized model's test error is at most {prob(c.bound)}, below chance "
                f"({prob(c.vacuous_at)}). It pays {c.code_bits:,} bits for the trained tensors "
                f"against {c.n_train:,} examples.{extra}"
            ]
        return [
            f"The compression bound ({prob(c.bound)}) is vacuous, at or above chance "
            f"({prob(c.vacuous_at)}): the trained tensors still "
            f"cost {c.code_bits:,} bits after quantization, far more than {c.n_train:,} "
            "examples can pay for (the bound needs K ln 2 to be small next to N). More data, "
            "fewer trained parameters, or a coarser code would be needed."
        ]

    def write_files(self, result: CompressionBoundResult, folder: Path) -> None:
        from genbound.io import save_tensors

        tensors = {k: v.contiguous() for k, v in result.quantized.items()}
        save_tensors(tensors, folder / QUANTIZED_FILE)


register_measure(Compression())
