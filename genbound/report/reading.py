"""A short plain-language reading of one checkpoint's measures: what they say and what not."""

from __future__ import annotations

from genbound.numbers import format_number
from genbound.numbers import format_probability as prob
from genbound.report.measures import Measures, trace_summary
from genbound.spectra import LayerSpectrum


def reading_lines(measures: Measures) -> list[str]:
    """Sentences (Markdown bullets) interpreting the computed measures; none for missing parts."""
    out: list[str] = []
    g = measures.gap
    if g is not None:
        z = g.error_gap / g.error_gap_stderr if g.error_gap_stderr > 0 else float("inf")
        verdict = "not distinguishable from zero" if abs(z) < 2 else "clearly different from zero"
        out.append(
            f"The measured 0-1 gap is {g.error_gap:+.4f} ± {g.error_gap_stderr:.4f} "
            f"({verdict} at two standard errors; {g.train.n:,} train and {g.test.n:,} test "
            "examples). This is the quantity the bounds below try to predict."
        )
    c = measures.compression
    if c is not None:
        if not c.vacuous:
            extra = ""
            if g is not None:
                extra = (
                    f" The measured test error is {prob(g.test.error)}, so the bound is "
                    f"{prob(c.bound - g.test.error)} above it."
                )
            out.append(
                f"The compression bound is non-vacuous: with probability >= {1 - c.delta:g}, the "
                f"quantized model's test error is at most {prob(c.bound)}, below chance "
                f"({prob(c.vacuous_at)}). It pays {c.code_bits:,} bits for the trained tensors "
                f"against {c.n_train:,} examples.{extra}"
            )
        else:
            out.append(
                f"The compression bound ({prob(c.bound)}) is vacuous, at or above chance "
                f"({prob(c.vacuous_at)}): the trained tensors still "
                f"cost {c.code_bits:,} bits after quantization, far more than {c.n_train:,} "
                "examples can pay for (the bound needs K ln 2 to be small next to N). More data, "
                "fewer trained parameters, or a coarser code would be needed."
            )
    mi = measures.mi
    if mi is not None:
        if mi.vacuous:
            out.append(
                f"The MI bound ({format_number(mi.bound, 3)}) exceeds the loss range ({mi.loss.loss_range:g}), "
                f"so it says nothing about this run: it charges q = {mi.q:g} bits for each of "
                f"D = {mi.d_actual:,} trained scalars against N = {mi.n_train:,} examples. "
                "Across variants it still orders methods by D q / N, which is its content."
            )
        else:
            out.append(
                f"The MI bound ({format_number(mi.bound, 3)}) bounds the expected gap of the "
                f"{mi.loss.description} under its assumptions (listed in report.json)."
            )
    if measures.theorem1 is not None:
        out.append(
            "Theorem 1's correction terms are products of layer norms: their absolute size "
            "(log10 Phi_dW = "
            f"{measures.theorem1.log10_phi_dW:.3g}) is not a usable bound for a transformer; "
            "only their ordering across methods on the same model carries information."
        )
    s = measures.spectra
    if s is not None and s.layers:
        with_intr = [x for x in s.layers if x.intruders is not None and 0.5 in x.intruders.eps]
        if with_intr:
            out.append(intruder_sentence(with_intr))
    cv = measures.curvature
    if cv is not None:
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
        out.append(
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
        )
    return [f"- {line}" for line in out]


def intruder_sentence(layers: list[LayerSpectrum], eps: float = 0.5) -> str:
    """What the intruder counts at ``eps`` say: how many of ``layers`` (each with intruders
    measured at ``eps``) gained directions W0 does not have. Layers trained in full (dense
    updates) are "updated layers", adapter layers "adapted layers"."""
    noun = "updated" if all(x.kind == "dense" for x in layers) else "adapted"
    n = sum(x.intruders.count_at(eps) > 0 for x in layers)
    k = layers[0].intruders.k
    what = (
        f"top-{k} singular vectors of W0 + dW unlike any of W0's (largest |cosine| below {eps:g})"
    )
    if n == 0:
        none = (
            f"The {noun} layer has no"
            if len(layers) == 1
            else f"None of the {len(layers)} {noun} layers has"
        )
        return (
            f"{none} intruder dimensions ({what}): every leading direction of the fine-tuned "
            "weight is close to one W0 already had, so the update re-weights existing "
            "directions rather than adding new ones."
        )
    if n == len(layers):
        every = "The" if n == 1 else f"All {n}"
        return (
            f"{every} {noun} layer{'s' if n > 1 else ''} {'has' if n == 1 else 'have'} "
            f"intruder dimensions ({what}): the update added directions W0 does not have."
        )
    return (
        f"{n} of {len(layers)} {noun} layers {'has' if n == 1 else 'have'} intruder "
        f"dimensions ({what}): in {'that layer' if n == 1 else 'those layers'} the update "
        "added directions W0 does not have; in the others it re-weights existing ones."
    )
