"""``report.md``: the measures of one checkpoint as Markdown tables and sentences."""

from __future__ import annotations

import math

import numpy as np

from genbound.numbers import format_number, format_pm
from genbound.numbers import format_probability as prob
from genbound.report.measures import Measures, trace_summary
from genbound.report.reading import reading_lines


def spectra_markdown(measures: Measures) -> list[str]:
    spectra = measures.spectra
    if spectra is None:
        return []
    lines = [
        "",
        "## Spectra",
        "",
        "| module | kind | shape | ‖dW‖₂ | ‖dW‖_F | stable rank | eff. rank | ‖dW‖₂/‖W0‖₂ | intruders (eps 0.5) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in spectra.layers:
        rel = f"{x.relative_spectral:.3g}" if x.relative_spectral is not None else "n/a"
        intr = (
            f"{x.intruders.count_at(0.5)} / {x.intruders.k}"
            if x.intruders is not None and 0.5 in x.intruders.eps
            else "n/a"
        )
        shape = " x ".join(map(str, x.shape))
        lines.append(
            f"| `{x.name}` | {x.kind} | {shape} | {x.spectral_norm:.4g} | {x.frobenius_norm:.4g} | "
            f"{x.stable_rank:.3g} | {x.effective_rank:.3g} | {rel} | {intr} |"
        )
    if spectra.skipped:
        lines += [
            "",
            "Not matrices (no spectrum): " + ", ".join(f"`{n}`" for n, _ in spectra.skipped),
        ]
    return lines


def gap_markdown(measures: Measures) -> list[str]:
    g = measures.gap
    if g is None:
        return []
    return [
        "",
        "## Empirical gap",
        "",
        "Same weights, eval mode, means per example (± one standard error).",
        "",
        "| | train | test | gap (test - train) |",
        "|---|---|---|---|",
        f"| examples | {g.train.n:,} | {g.test.n:,} | |",
        f"| cross-entropy (nats) | {format_pm(g.train.loss, g.train.loss_stderr)} | "
        f"{format_pm(g.test.loss, g.test.loss_stderr)} | "
        f"{format_pm(g.loss_gap, g.loss_gap_stderr)} |",
        f"| 0-1 error | {format_pm(g.train.error, g.train.error_stderr)} | "
        f"{format_pm(g.test.error, g.test.error_stderr)} | "
        f"{format_pm(g.error_gap, g.error_gap_stderr)} |",
    ]


def compression_markdown(measures: Measures) -> list[str]:
    c = measures.compression
    if c is None:
        return []
    verdict = "vacuous" if c.vacuous else "non-vacuous"
    lines = [
        "",
        "## Compression bound (PAC-Bayes, Lotfi et al. 2022)",
        "",
        f"With probability >= {1 - c.delta:g} over the {c.n_train:,} training examples, the "
        f"test 0-1 error of the quantized model is at most **{prob(c.bound)}** ({verdict}: "
        f"chance level is {prob(c.vacuous_at)}). Chosen: b = {c.chosen_bits} bits per index "
        f"({2**c.chosen_bits:,} levels), K = {c.code_bits:,} bits, quantized train error "
        f"{prob(c.train_error)}, kl bound rhs = {format_number(c.rhs)} nats.",
    ]
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


def curvature_markdown(measures: Measures) -> list[str]:
    lines = []
    c = measures.curvature
    if c is not None:
        top = c.top
        conv = "converged" if top.converged else "NOT converged"
        lines += [
            "",
            "## Curvature",
            "",
            f"Hessian of the mean training cross-entropy over {c.examples} examples, with respect "
            f"to {c.space} ({top.dimension:,} dimensions).",
            "",
            f"- top eigenvalue: {top.eigenvalues[0]:.5g} (Lanczos, {top.iterations} products, "
            f"relative residual {top.residuals[0]:.2g}, {conv} at tol {top.tol:g})",
            f"- trace: {trace_summary(c)}",
            f"- spectral density: stochastic Lanczos quadrature, {c.density.nodes.shape[0]} "
            f"probes x {c.density.nodes.shape[1]} steps",
            "",
            "![Hessian spectral density](figures/hessian-density.png)",
        ]
    if measures.landscapes:
        lines += [
            "",
            "## Loss landscape (1-D slices)",
            "",
            "| direction | moves | centre loss | curvature (2c of a quadratic fit) | flat fraction | mean ascent at rho |",
            "|---|---|---|---|---|---|",
        ]
        for kind, ls in measures.landscapes.items():
            lines.append(
                f"| {kind} | {ls.metadata.get('moves', ls.space)} | "
                f"{format_number(ls.centre_loss)} | {format_number(ls.curvature[0])} | "
                f"{ls.flat_fraction:.2f} (tol {ls.tol:g}) | {format_number(ls.ascent)} "
                f"(rho {ls.rho:g}) |"
            )
        for kind in measures.landscapes:
            lines += ["", f"![landscape along {kind}](figures/landscape-{kind}.png)"]
    return lines


def theorem1_notes(t) -> list[str]:
    """Why a Theorem 1 term is exactly zero (its log10 printed as ``-inf``), in words."""
    layers = (
        ", ".join(f"`{n}`" for n in t.layer_names)
        if 0 < len(t.layer_names) <= 3
        else f"{t.num_layers} layers"
    )
    notes = []
    if t.log10_phi_W0 == -math.inf:
        why = (
            f"every layer of the chain ({layers}) is new to the model, so W0 = 0 there and "
            "the network with W0 + dW is the network with dW alone: the bound's second form, "
            "G(W0 + dW) <= G(dW) + Phi_W0, has no correction term"
            if np.all(t.base_norms == 0)
            else "the recursion's terms vanish (a zero norm, Lipschitz constant or input norm)"
        )
        notes.append(f"log10 Phi_W0 = -inf: Phi_W0 = 0 exactly, because {why}.")
    if t.log10_phi_dW == -math.inf:
        why = (
            f"dW = 0 in every layer of the chain ({layers}): G(W0 + dW) = G(W0)"
            if np.all(t.update_norms == 0)
            else "the recursion's terms vanish (a zero norm, Lipschitz constant or input norm)"
        )
        notes.append(f"log10 Phi_dW = -inf: Phi_dW = 0 exactly, because {why}.")
    return notes


def bounds_markdown(measures: Measures) -> list[str]:
    lines = ["", "## Bounds", ""]
    mi = measures.mi
    if mi is not None:
        verdict = "vacuous" if mi.vacuous else "non-vacuous"
        lines.append(
            f"- MI bound on the expected gap of the {mi.loss.description}: "
            f"{format_number(mi.bound)} "
            f"({verdict}; D = {mi.d_actual:,} "
            f"trained scalars, q = {mi.q:g} bits, N = {mi.n_train:,} from the "
            f"{mi.n_train_source if mi.n_train_source != 'given' else measures.n_train_source}); "
            f"Occam form at delta = {mi.delta:g}: {format_number(mi.occam_bound)}."
        )
        if mi.d_difference:
            lines.append(
                f"- D from the {mi.variant} formula: {mi.d_formula:,} ({mi.difference_note})."
            )
    if measures.theorem1 is not None:
        t = measures.theorem1
        lines.append(
            f"- Theorem 1 (corrected): log10 Phi_dW = {format_number(t.log10_phi_dW)}, "
            f"log10 Phi_W0 = {format_number(t.log10_phi_W0)} (only the ordering across "
            "methods on one model means anything for transformers)."
        )
        lines += [f"- {note}" for note in theorem1_notes(t)]
    for part, why in measures.skipped.items():
        lines.append(f"- {part}: not computed: {why}")
    for w in (*measures.warnings, *(mi.warnings if mi is not None else ())):
        lines.append(f"- warning: {w}")
    return lines


def render_markdown(info: dict, measures: Measures) -> str:
    """The whole ``report.md`` of one checkpoint (``info`` from ``checkpoint_info``)."""
    n = measures.n_train
    lines = [
        f"# genbound report: {info['variant']} ({info['format']})",
        "",
        f"- checkpoint: `{info['path']}`",
        f"- base model: `{info['base_model']}`",
        f"- trainable parameters: {info['num_trainable']:,} from the tensors, "
        f"{info['num_trainable_by_formula']:,} from the {info['variant']} formula",
        f"- stored dtype: {info['dtype']} ({info['bits_per_param']} bits per parameter)",
        f"- training examples: {f'{n:,} ({measures.n_train_source})' if n is not None else 'unknown'}",
        f"- data: {measures.task or 'none (data-free report)'}",
    ]
    reading = reading_lines(measures)
    if reading:
        lines += ["", "## What the numbers say", "", *reading]
    lines += gap_markdown(measures)
    lines += compression_markdown(measures)
    lines += bounds_markdown(measures)
    lines += curvature_markdown(measures)
    lines += spectra_markdown(measures)
    if measures.spectra is not None and measures.spectra.layers:
        lines += ["", "![singular spectra](figures/spectra.png)"]
        if any(x.intruders is not None for x in measures.spectra.layers):
            lines += ["", "![intruder dimensions](figures/intruders.png)"]
    return "\n".join(lines) + "\n"
