"""``gap``: the empirical generalization gap (test - train, same weights, eval mode).

Needs a task. It is what every other measure is judged against: sweeps rank measures by
how they track it. ``report.json``: ``gap``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genbound.measures.base import Measure
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.gap import GapResult


def _one(unit: str) -> str:
    """``"examples"`` -> ``"example"``: one unit of N."""
    return unit.removesuffix("s")


class Gap(Measure):
    name = "gap"
    description = "the empirical gap on the task's train and test data"
    needs_task = True
    section = "gap"

    def compute(self, ctx) -> GapResult:
        from genbound.gap import empirical_gap

        train, test = ctx.objectives()
        return empirical_gap(train, test)

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        return {("gap",): jsonable(result) if result is not None else None}

    def markdown(self, result: GapResult, measures) -> list[str]:
        from genbound.numbers import format_pm

        g = result
        weighted = g.weight_unit is not None and g.train.n_tokens is not None
        how = (
            f"Same weights, eval mode, means per {_one(g.weight_unit)} over all "
            f"{g.weight_unit} of the split (± one standard error, {g.unit} as the "
            "independent units)."
            if weighted
            else f"Same weights, eval mode, means per {_one(g.unit)} (± one standard error)."
        )
        lines = [
            "",
            "## Empirical gap",
            "",
            how,
            "",
            "| | train | test | gap (test - train) |",
            "|---|---|---|---|",
            f"| {g.unit} | {g.train.n:,} | {g.test.n:,} | |",
        ]
        if weighted:
            lines.append(
                f"| {g.weight_unit} | {g.train.n_tokens:,.0f} | {g.test.n_tokens:,.0f} | |"
            )
        lines += [
            f"| {g.loss_name} ({g.loss_unit}) | {format_pm(g.train.loss, g.train.loss_stderr)} | "
            f"{format_pm(g.test.loss, g.test.loss_stderr)} | "
            f"{format_pm(g.loss_gap, g.loss_gap_stderr)} |",
            f"| {g.error_name} | {format_pm(g.train.error, g.train.error_stderr)} | "
            f"{format_pm(g.test.error, g.test.error_stderr)} | "
            f"{format_pm(g.error_gap, g.error_gap_stderr)} |",
        ]
        if weighted:
            lines.append(
                f"| per-{_one(g.unit)} mean {g.loss_name} | {g.train.unit_loss:.4f} | "
                f"{g.test.unit_loss:.4f} | {g.test.unit_loss - g.train.unit_loss:+.4f} |"
            )
            lines.append(
                f"| per-{_one(g.unit)} mean {g.error_name} | {g.train.unit_error:.4f} | "
                f"{g.test.unit_error:.4f} | {g.test.unit_error - g.train.unit_error:+.4f} |"
            )
        return lines

    def reading(self, result: GapResult, measures) -> list[str]:
        g = result
        if g.error_gap_stderr > 0:
            z = g.error_gap / g.error_gap_stderr
        else:  # every unit scored alike: the gap is exactly what it is
            z = 0.0 if g.error_gap == 0 else float("inf")
        verdict = "not distinguishable from zero" if abs(z) < 2 else "clearly different from zero"
        what = "0-1 gap" if g.error_name == "0-1 error" else f"gap in {g.error_name}"
        if g.weight_unit is not None:  # a language model: its loss gap first
            zl = g.loss_gap / g.loss_gap_stderr if g.loss_gap_stderr > 0 else 0.0
            return [
                f"The measured {g.loss_name} gap is {g.loss_gap:+.4f} ± "
                f"{g.loss_gap_stderr:.4f} {g.loss_unit} "
                f"({'not distinguishable from zero' if abs(zl) < 2 else 'clearly different from zero'}"
                f" at two standard errors), the {what} {g.error_gap:+.4f} ± "
                f"{g.error_gap_stderr:.4f} ({verdict}); {g.train.n:,} train and "
                f"{g.test.n:,} test {g.unit} ({g.train.n_tokens:,} and {g.test.n_tokens:,} "
                f"{g.weight_unit}). This is the quantity the bounds below try to predict."
            ]
        return [
            f"The measured {what} is {g.error_gap:+.4f} ± {g.error_gap_stderr:.4f} "
            f"({verdict} at two standard errors; {g.train.n:,} train and {g.test.n:,} test "
            f"{g.unit}). This is the quantity the bounds below try to predict."
        ]


register_measure(Gap())
