"""``pacbayes``: the Gaussian PAC-Bayes-kl certificate of a randomised predictor around the
checkpoint's trained tensors (:mod:`genbound.bounds.gaussian`).

Needs a task: the sampled models' errors are measured on the task's training set
(``options.pacbayes_samples`` models, each on about N / m units, plus a pilot that chooses
sigma). ``report.json``: ``bounds.pacbayes`` with every input needed to check it by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.bounds.gaussian import GaussianBoundResult


def pacbayes_json(g: GaussianBoundResult | None) -> dict | None:
    """The bound with every input needed to check it by hand."""
    from genbound.report.serialize import jsonable

    if g is None:
        return None
    return jsonable(g)


def _format(g: GaussianBoundResult):
    from genbound.numbers import format_number, format_probability

    return format_probability if g.error_range == 1.0 else format_number


class PacBayes(Measure):
    name = "pacbayes"
    description = "the Gaussian PAC-Bayes-kl certificate of a randomised predictor"
    needs_task = True
    section = "bounds"
    scalars: ClassVar[dict[str, Scalar]] = {
        "pacbayes_bound": Scalar(
            lambda d: number(get(d, "bounds", "pacbayes", "bound")),
            "Gaussian PAC-Bayes bound on the randomised predictor's test error",
            lambda d: number(get(d, "bounds", "pacbayes", "vacuous_at")),
            "chance level (1 - 1/classes for the 0-1 error)",
        ),
    }

    def compute(self, ctx) -> GaussianBoundResult:
        from genbound.bounds.gaussian import gaussian_bound_on

        train, _ = ctx.objectives()
        return gaussian_bound_on(
            ctx.checkpoint,
            train,
            num_classes=getattr(ctx.task, "num_labels", None),
            samples=ctx.options.pacbayes_samples,
            seed=ctx.options.seed,
        )

    def json(self, result, ckpt) -> dict:
        return {("bounds", "pacbayes"): pacbayes_json(result)}

    def markdown(self, result: GaussianBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        g, prob = result, _format(result)
        verdict = "vacuous" if g.vacuous else "non-vacuous"
        return [
            f"- Gaussian PAC-Bayes (Dziugaite & Roy 2017): with probability >= "
            f"{1 - g.delta - g.delta_mc:g}, the test {g.error_name} of the randomised "
            f"predictor (trained tensors + Gaussian noise) is at most **{prob(g.bound)}** "
            f"({verdict}: chance level is {prob(g.vacuous_at)}).",
            f"  Posterior {g.candidate}, sigma = {format_number(g.sigma)} (prior sigma "
            f"{format_number(g.prior_sigma)}), KL = {format_number(g.kl)} nats over "
            f"D = {g.num_coordinates:,} coordinates against N = {g.n_train:,}; "
            f"{g.samples} sampled models (each on {g.examples_per_sample:,} units): train "
            f"error {prob(g.mc_error)}, at most {prob(g.mc_bound)} with probability >= "
            f"{1 - g.delta_mc:g}; rhs = {format_number(g.rhs)} nats, {g.num_choices} choices "
            "paid for.",
        ]

    def reading(self, result: GaussianBoundResult, measures) -> list[str]:
        from genbound.numbers import format_number

        g, prob = result, _format(result)
        if not g.vacuous:
            return [
                f"The Gaussian PAC-Bayes certificate is non-vacuous: the randomised predictor "
                f"around the trained tensors has test error at most {prob(g.bound)} "
                f"(chance {prob(g.vacuous_at)}); it bounds the noisy model, not the trained "
                "one."
            ]
        return [
            f"The Gaussian PAC-Bayes certificate ({prob(g.bound)}) is vacuous: "
            f"KL = {format_number(g.kl)} nats against N = {g.n_train:,} examples (the bound "
            "needs KL to be small next to N), at the posterior noise the trained model "
            f"tolerates (train error {prob(g.mc_error)} at sigma = {format_number(g.sigma)})."
        ]


register_measure(PacBayes())
