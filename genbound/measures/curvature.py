"""``curvature``: top eigenvalue, trace and spectral density of the training loss's Hessian.

Needs a task. Taken on a seeded random sample of the training set stratified by label
(``options.curvature_examples``), by default with respect to each adapted layer's merged dW
on the directions its adapter reaches (``options.curvature_space``, see
:data:`genbound.options.CURVATURE_SPACES`), on one Hessian operator shared by Lanczos
(top eigenvalue), Hutch++ (trace) and stochastic Lanczos quadrature (density), so its
cached graphs serve all three. ``report.json``: ``curvature``; figure
``hessian-density.png``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure
from genbound.options import CURVATURE_SPACES

if TYPE_CHECKING:
    from genbound.curvature.algorithms import DensityResult, EigenResult, TraceResult
    from genbound.tasks.objective import Objective
    from genbound.tasks.sampling import Sample


@dataclass(frozen=True)
class Curvature:
    """Hessian of the mean training loss with respect to the updated tensors.

    Attributes:
        top: the top eigenvalue (residual, converged flag, products used).
        trace: the Hutch++ trace with its standard error (``reliable`` says whether it
            resolves the value).
        density: the spectral density by stochastic Lanczos quadrature, with its own trace
            estimate and standard error.
        examples: training examples the loss averages over.
        space: what the Hessian is taken with respect to.
        sample: which examples (a seeded random sample stratified by label), if known.
    """

    top: EigenResult
    trace: TraceResult
    density: DensityResult
    examples: int
    space: str
    sample: Sample | None = None


def hessian_curvature(
    objective: Objective,
    space: str,
    seed: int,
    trace_products: int,
    probes: int,
    steps: int,
    sample: Sample | None = None,
) -> Curvature:
    """Top eigenvalue, trace and density in ``space`` (full fine-tuning: its tensors), on
    one operator."""
    from genbound.curvature.algorithms import hutchpp, lanczos, slq_density
    from genbound.curvature.api import hessian_operator
    from genbound.curvature.operator import COORDINATES_ABOVE, find_adapted

    parameterization = "merged" if space == "merged" else "factors"
    if space == "merged" and not find_adapted(objective.model, objective.trainable)[0]:
        parameterization, space = "factors", "tensors"  # no adapter layer: nothing to merge
    merged = hessian_operator(objective, parameterization=parameterization)
    # long dW vectors (a large model's): the same operator in its tangent coordinates
    view = merged.in_coordinates() if getattr(merged, "size", 0) > COORDINATES_ABOVE else merged
    with view as op:
        top = lanczos(op, 1, tol=1e-3, seed=seed)
        trace = hutchpp(op, trace_products, seed=seed)
        density = slq_density(op, probes, steps, seed=seed, grid_size=512)
    space = CURVATURE_SPACES[space]
    top = dataclasses.replace(top, parameterization=space)
    trace = dataclasses.replace(trace, parameterization=space)
    density = dataclasses.replace(density, parameterization=space)
    return Curvature(top, trace, density, objective.num_examples, space, sample)


def trace_summary(cv: Curvature) -> str:
    """Both trace estimates with their standard errors, each said to resolve the value or
    not (see :func:`genbound.curvature.algorithms.resolves`)."""
    from genbound.curvature.algorithms import MIN_TRACE_SAMPLES, RELIABLE_RELATIVE_STDERR

    t, d = cv.trace, cv.density

    def verdict(ok: bool, samples: int) -> str:
        if ok:
            return "resolved"
        if samples < MIN_TRACE_SAMPLES:
            return f"not resolved: {samples} random samples, fewer than {MIN_TRACE_SAMPLES}"
        return f"not resolved: standard error above {RELIABLE_RELATIVE_STDERR:.0%} of the value"

    hutch = f"Hutch++ {t.trace:.4g} ± {t.stderr:.2g} ({t.num_products} products; "
    hutch += f"{verdict(t.reliable, t.samples.size)})"
    if not math.isfinite(d.trace_stderr):
        return f"{hutch}; SLQ {d.trace:.4g} (one probe: no standard error)"
    probes = d.trace_samples.size
    slq = f"SLQ {d.trace:.4g} ± {d.trace_stderr:.2g} ({probes} probes; "
    return f"{hutch}; {slq}{verdict(d.trace_reliable, probes)})"


def curvature_json(c: Curvature | None) -> dict | None:
    from genbound.report.serialize import jsonable

    if c is None:
        return None
    return {
        "space": c.space,
        "examples": c.examples,
        "sample": jsonable(c.sample) if c.sample is not None else None,
        "top_eigenvalue": float(c.top.eigenvalues[0]),
        "top": jsonable(c.top, skip=frozenset({"vectors"})),
        "trace": jsonable(c.trace),
        "density": jsonable(c.density) | {"figure": "figures/hessian-density.png"},
    }


def _resolved_trace(doc: Mapping) -> float | None:
    """The Hessian trace when an estimate resolves it: Hutch++'s, else SLQ's; None when
    neither does (a report without the ``reliable`` flags: Hutch++'s as it is)."""
    hutch = get(doc, "curvature", "trace")
    if not isinstance(hutch, Mapping):
        return None
    if hutch.get("reliable", True):
        return number(hutch.get("trace"))
    slq = get(doc, "curvature", "density")
    if isinstance(slq, Mapping) and slq.get("trace_reliable"):
        return number(slq.get("trace"))
    return None


class HessianCurvature(Measure):
    name = "curvature"
    description = "top eigenvalue, trace and spectral density of the Hessian"
    needs_task = True
    section = "curvature"
    scalars: ClassVar[dict[str, Scalar]] = {
        "hessian_top_eigenvalue": Scalar(
            lambda d: number(get(d, "curvature", "top_eigenvalue")), "top Hessian eigenvalue"
        ),
        "hessian_trace": Scalar(_resolved_trace, "Hessian trace (resolved estimates only)"),
    }

    def compute(self, ctx) -> Curvature:
        o = ctx.options
        sub, sample = ctx.sample()
        objective = sub if o.curvature_space == "tensors" else ctx.adapted()
        cv = hessian_curvature(
            objective,
            o.curvature_space,
            o.seed,
            o.trace_products,
            o.density_probes,
            o.density_steps,
            sample,
        )
        if not cv.trace.reliable:
            ctx.warnings.append(
                f"the Hessian trace is not resolved: {trace_summary(cv)}. Take more "
                "products (--trace-products) before reading it"
            )
        return cv

    def json(self, result, ckpt) -> dict:
        return {("curvature",): curvature_json(result)}

    def markdown(self, result: Curvature, measures) -> list[str]:
        c = result
        top = c.top
        conv = "converged" if top.converged else "NOT converged"
        return [
            "",
            "## Curvature",
            "",
            f"Hessian of the mean training cross-entropy over {c.examples} examples, with "
            f"respect to {c.space} ({top.dimension:,} dimensions).",
            "",
            f"- top eigenvalue: {top.eigenvalues[0]:.5g} (Lanczos, {top.iterations} products, "
            f"relative residual {top.residuals[0]:.2g}, {conv} at tol {top.tol:g})",
            f"- trace: {trace_summary(c)}",
            f"- spectral density: stochastic Lanczos quadrature, {c.density.nodes.shape[0]} "
            f"probes x {c.density.nodes.shape[1]} steps",
            "",
            "![Hessian spectral density](figures/hessian-density.png)",
        ]

    def reading(self, result: Curvature, measures) -> list[str]:
        cv = result
        conv = "converged" if cv.top.converged else "did not converge: treat it as a lower estimate"
        drawn = ""
        if cv.sample is not None and cv.sample.stratified_by is not None:
            drawn = f" (a random sample stratified by label, seed {cv.sample.seed})"
        if cv.trace.reliable:
            trace_note = ""
        elif cv.density.trace_reliable:
            trace_note = "Hutch++ does not resolve the trace; the SLQ estimate does. "
        else:
            trace_note = (
                "Neither estimate resolves the trace (standard errors too large for the "
                "value): treat it as unknown, not as a number, and take more products. "
            )
        return [
            f"The top Hessian eigenvalue ({cv.top.eigenvalues[0]:.4g}, {conv}) and the trace "
            f"({trace_summary(cv)}) are taken on {cv.examples:,} training examples{drawn} "
            f"with respect to {cv.space}. {trace_note}"
            + (
                "Taken on dW, they do not depend on how dW is factored, but each variant "
                "reaches different directions, and sharpness alone is not known to predict "
                "the gap across variants: compare it with the measured gap in a sweep."
                if cv.space.startswith("the merged update")
                else "Sharpness depends on the parameterization, so compare it only between "
                "runs of the same variant."
            )
        ]

    def write_files(self, result: Curvature, folder: Path) -> None:
        from genbound.report.figures import plot_density

        plot_density(result, folder / "figures" / "hessian-density.png")


register_measure(HessianCurvature())
