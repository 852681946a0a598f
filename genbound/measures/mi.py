"""``mi``: the MI bound on the expected gap and its Occam form (single run, 1 - delta).

Data-free, but needs N (given, recorded by the checkpoint, or the task's training set).
The loss it is stated for is ``options.mi_loss``, by default the error the task's metric
declares (the 0-1 loss for classification and without a task); a clipped
cross-entropy is checked against the largest losses the gap measured, when it was.
``report.json``: ``bounds.mi``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.bounds import MIBoundResult

_LOSS_RANGE = "the loss range, 1 for the 0-1 loss"


def _loss_range(d) -> float | None:
    return number(get(d, "bounds", "mi", "loss", "loss_range"))


def _unit(measures) -> str:
    """What N counts: the gap's units (texts for a language model), else examples."""
    gap = getattr(measures, "gap", None)
    return gap.unit if gap is not None else "examples"


def mi_loss_of(task) -> dict:
    """The MI bound's loss a task's metric declares (the 0-1 loss without a task)."""
    metric = getattr(task, "metric", None) if task is not None else None
    return metric.mi_loss() if metric is not None else {"loss": "zero_one"}


class MutualInformation(Measure):
    name = "mi"
    description = "MI and Occam bounds (needs N)"
    after = ("gap",)
    section = "bounds"
    scalars: ClassVar[dict[str, Scalar]] = {
        "mi_bound": Scalar(
            lambda d: number(get(d, "bounds", "mi", "bound")),
            "MI bound (0-1 loss)",
            _loss_range,
            _LOSS_RANGE,
        ),
        "occam_bound": Scalar(
            lambda d: number(get(d, "bounds", "mi", "occam_bound")),
            "Occam bound",
            _loss_range,
            _LOSS_RANGE,
        ),
    }

    def compute(self, ctx) -> MIBoundResult:
        from genbound.bounds import mi_bound

        args = dict(ctx.options.mi_loss or mi_loss_of(ctx.task))
        num_labels = getattr(ctx.task, "num_labels", None) if ctx.task is not None else None
        if args.get("loss") == "smoothed_ce" and num_labels is not None:
            args.setdefault("num_classes", num_labels)
        gap = ctx.results.get("gap")
        if args.get("loss") == "clipped_ce" and gap is not None:
            # the raw cross-entropies seen, against the clip level (a warning if above it)
            args["observed_losses"] = [gap.train.max_loss, gap.test.max_loss]
        return mi_bound(ctx.checkpoint, n_train=ctx.n_train, **args)

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        return {("bounds", "mi"): jsonable(result) if result is not None else None}

    def markdown(self, result: MIBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        mi = result
        verdict = "vacuous" if mi.vacuous else "non-vacuous"
        source = mi.n_train_source if mi.n_train_source != "given" else measures.n_train_source
        lines = [
            f"- MI bound on the expected gap of the {mi.loss.description}: "
            f"{format_number(mi.bound)} "
            f"({verdict}; D = {mi.d_actual:,} "
            f"trained scalars, q = {mi.q:g} bits, N = {mi.n_train:,} {_unit(measures)} from the "
            f"{source}); "
            f"Occam form at delta = {mi.delta:g}: {format_number(mi.occam_bound)}."
        ]
        if mi.d_difference:
            lines.append(
                f"- D from the {mi.variant} formula: {mi.d_formula:,} ({mi.difference_note})."
            )
        return lines

    def reading(self, result: MIBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        mi = result
        if mi.vacuous:
            return [
                f"The MI bound ({format_number(mi.bound, 3)}) exceeds the loss range "
                f"({mi.loss.loss_range:g}), so it says nothing about this run: it charges "
                f"q = {mi.q:g} bits for each of D = {mi.d_actual:,} trained scalars against "
                f"N = {mi.n_train:,} {_unit(measures)}. Across variants it still orders methods by "
                "D q / N, which is its content."
            ]
        return [
            f"The MI bound ({format_number(mi.bound, 3)}) bounds the expected gap of the "
            f"{mi.loss.description} under its assumptions (listed in report.json)."
        ]

    def log_values(self, result: MIBoundResult, *, per_layer: bool, intruder_eps: float) -> dict:
        return {"mi_bound": result.bound, "occam_bound": result.occam_bound}


register_measure(MutualInformation())
