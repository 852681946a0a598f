"""``sharpness``: PAC-Bayes flatness and sharpness, plain and magnitude-aware (Jiang et al.
2020), found by bisection (:mod:`genbound.flatness`).

Needs a task. On a seeded random sample of the training set stratified by label
(``options.sharpness_examples``), in two spaces (:data:`genbound.flatness_spaces.SPACES`):
the merged weights W = W0 + dW of the updated tensors (reference W0) and the adapter's
trained tensors (reference: the values before training the checkpoint records, else 0).
In each, four searches find the largest Gaussian noise scale sigma (plain; magnitude-aware
sigma') and l_inf radius alpha (plain; magnitude-aware alpha') at which the train error
rises by 0.1 (tolerance 0.01), with ``options.sharpness_samples`` noise draws and
``options.sharpness_starts`` adversarial starts per step, at most
``options.sharpness_depth`` steps. ``report.json``: ``sharpness``. The sweep ranks the
merged space's numbers (the trained tensors' depend on how each variant factors dW).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.flatness import Search
    from genbound.flatness_spaces import SpaceFlatness
    from genbound.tasks.sampling import Sample

#: What each search's scale is called, and its inverse square.
NAMES = {
    "gaussian": ("sigma", "PAC-Bayes flatness 1/sigma^2"),
    "gaussian_magnitude": ("sigma'", "magnitude-aware PAC-Bayes flatness 1/sigma'^2"),
    "adversarial": ("alpha", "sharpness 1/alpha^2"),
    "adversarial_magnitude": ("alpha'", "magnitude-aware sharpness 1/alpha'^2"),
}


#: Fields of a search that are wall times, not results (left out of report.json).
_TIMES = frozenset({"seconds"})


@dataclass(frozen=True)
class Sharpness:
    """The flatness searches of one checkpoint.

    Attributes:
        spaces: by space name (``merged``, ``trained``).
        examples: training examples the error is measured on.
        sample: which examples (a seeded random sample stratified by label).
        n_train: m, the training set's size in the PAC-Bayes expressions.
        error_name: the error whose rise is sought (the task metric's).
        chance: that error's chance level (None: not defined).
    """

    spaces: dict[str, SpaceFlatness]
    examples: int
    sample: Sample | None
    n_train: int
    error_name: str
    chance: float | None = None


def _converged(doc: Mapping, kind: str, key: str) -> float | None:
    """``key`` of a merged-space search's record when it converged, else None."""
    found = get(doc, "sharpness", "spaces", "merged", "searches", kind)
    if not isinstance(found, Mapping) or found.get("converged") is not True:
        return None
    return number(found.get(key))


def _expression(doc: Mapping, kind: str, key: str) -> float | None:
    """A merged-space PAC-Bayes expression when its search converged, else None."""
    if _converged(doc, kind, "scale") is None:
        return None
    return number(get(doc, "sharpness", "spaces", "merged", key))


def _scalar(kind: str, description: str) -> Scalar:
    return Scalar(lambda d: _converged(d, kind, "inverse_square"), description)


def _rise(s: Search) -> str:
    """The rise with its standard error (one draw: none)."""
    from genbound.numbers import format_number as f

    if math.isfinite(s.rise_stderr):
        return f"{f(s.rise)} ± {f(s.rise_stderr)}"
    return f"{f(s.rise)} (one draw)"


class SharpnessMeasure(Measure):
    name = "sharpness"
    description = "PAC-Bayes flatness and sharpness by bisection (Jiang et al. 2020)"
    needs_task = True
    section = "curvature"
    scalars: ClassVar[dict[str, Scalar]] = {
        "pacbayes_flatness": _scalar("gaussian", "PAC-Bayes flatness 1/sigma^2 (merged W)"),
        "pacbayes_mag_flatness": _scalar(
            "gaussian_magnitude", "magnitude-aware PAC-Bayes flatness 1/sigma'^2 (merged W)"
        ),
        "sharpness_flatness": _scalar("adversarial", "sharpness 1/alpha^2 (merged W)"),
        "sharpness_mag_flatness": _scalar(
            "adversarial_magnitude", "magnitude-aware sharpness 1/alpha'^2 (merged W)"
        ),
        "pacbayes_init": Scalar(
            lambda d: _expression(d, "gaussian", "pacbayes_normalised"),
            "sqrt(PAC-Bayes expression / m), flatness from W0 (merged W)",
        ),
        "pacbayes_mag_init": Scalar(
            lambda d: _expression(d, "gaussian_magnitude", "pacbayes_magnitude_normalised"),
            "sqrt(magnitude-aware PAC-Bayes expression / m), from W0 (merged W)",
        ),
    }

    def compute(self, ctx) -> Sharpness:
        from dataclasses import replace

        from genbound.flatness import SearchSettings
        from genbound.flatness_spaces import flatness_of
        from genbound.measures.landscape import base_values

        o = ctx.options
        sub, sample = ctx.sharpness_sample()
        train, _ = ctx.objectives()
        m = ctx.n_train if ctx.n_train is not None else train.num_examples
        settings = SearchSettings(
            depth=o.sharpness_depth,
            samples=o.sharpness_samples,
            ascent_steps=o.sharpness_ascent_steps,
            seed=o.seed,
        )
        spaces = flatness_of(
            ctx.checkpoint,
            sub,
            base_values(ctx.checkpoint, sub),
            m=m,
            settings=settings,
            adversarial=replace(settings, samples=o.sharpness_starts),
            spaces=o.sharpness_spaces,
        )
        metric = sub.metric
        return Sharpness(spaces, sub.num_examples, sample, int(m), metric.error_name, metric.chance)

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        # wall times are not results: report.json keeps them under timings_s only
        return {("sharpness",): None if result is None else jsonable(result, skip=_TIMES)}

    def markdown(self, result: Sharpness, measures) -> list[str]:
        from genbound.numbers import format_number as f

        r = result
        lines = [
            "",
            "## Flatness and sharpness (Jiang et al. 2020)",
            "",
            f"Largest perturbation at which the train {r.error_name} rises by 0.1 (tolerance "
            f"0.01) on {r.examples:,} training examples, found by bisection; larger 1/scale^2 "
            "is sharper.",
        ]
        for sp in r.spaces.values():
            lines += [
                "",
                f"**{sp.space}**: {sp.description}; reference {sp.reference}; "
                f"{sp.coordinates:,} coordinates, ||w - w0||^2 = {f(sp.sq_distance)}, train "
                f"error {f(sp.base_error)} unperturbed.",
                "",
                "| search | scale | 1/scale^2 | rise ± s.e. | bracket | steps | outcome |",
                "|---|---|---|---|---|---|---|",
            ]
            for kind, s in sp.searches.items():
                lines.append(
                    f"| {kind} | {NAMES[kind][0]} = {f(s.scale)} | {f(s.inverse_square)} | "
                    f"{_rise(s)} | [{f(s.lower)}, {f(s.upper)}] | "
                    f"{len(s.evaluations)} | {s.outcome} |"
                )
            for kind, why in sp.unavailable.items():
                lines.append(f"| {kind} | not run: {why} | | | | | |")
            floored = [
                k
                for k, s in sp.searches.items()
                if k.endswith("magnitude") and s.outcome.startswith("above")
            ]
            if floored:
                eps = sp.searches[floored[0]].settings.eps
                lines += [
                    "",
                    f"{', '.join(floored)}: the rise exceeds the target already at the smallest "
                    f"scale tried, where the perturbation is essentially Jiang et al.'s floor "
                    f"eps = {eps:g} on each of the {sp.coordinates:,} coordinates.",
                ]
            terms = []
            if sp.pacbayes is not None:
                terms.append(
                    f"||w - w0||^2/(4 sigma^2) + ln(m/sigma) + 10 = {f(sp.pacbayes)} "
                    f"(sqrt(./m) = {f(sp.pacbayes_normalised)})"
                )
            if sp.pacbayes_magnitude is not None:
                terms.append(
                    f"magnitude-aware {f(sp.pacbayes_magnitude)} "
                    f"(sqrt(./m) = {f(sp.pacbayes_magnitude_normalised)})"
                )
            if terms:
                lines += ["", f"PAC-Bayes expressions, m = {sp.m:,}: {'; '.join(terms)}."]
        return lines

    def reading(self, result: Sharpness, measures) -> list[str]:
        from genbound.numbers import format_number as f

        merged = result.spaces.get("merged")
        if merged is None:
            return []
        found = [f"{NAMES[k][0]} = {f(s.scale)}" for k, s in merged.searches.items() if s.converged]
        missed = [f"{k}: {s.outcome}" for k, s in merged.searches.items() if not s.converged]
        text = (
            f"Perturbing the merged weights, the train {result.error_name} rises by 0.1 at "
            f"{', '.join(found) if found else 'no scale the searches found'}"
        )
        if missed:
            text += f" (did not converge, so leave out: {'; '.join(missed)}"
            target = next(iter(merged.searches.values())).settings.target
            if result.chance is not None and merged.base_error + target > result.chance:
                text += (
                    f"; the unperturbed error {f(merged.base_error)} is within {target:g} of "
                    f"chance, {f(result.chance)}"
                )
            text += ")"
        return [
            text + ". Jiang et al. (2020) found the magnitude-aware forms to track the gap "
            "best among some 40 measures on image classifiers; whether they do on these runs "
            "is for a sweep to show."
        ]


register_measure(SharpnessMeasure())
