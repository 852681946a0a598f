"""The sweep comparison: one table (run x measure, the gap with its standard error),
Kendall's tau of every measure against the measured gap (informative measures ranked with
their interval, permutation p-value, granulated tau and sign-error; the others listed with
the reason), the reading in words, and a figure of each ranked measure against the gap.
Written as sweep.json, sweep.md and sweep.html (the same text, figures embedded)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from genbound.compare import Correlation, measure_description, rank_correlations, sweep_rows
from genbound.io import atomic_directory
from genbound.numbers import format_count, format_number, format_pm, format_probability
from genbound.report.certificates import certificate_markdown, certificate_rows
from genbound.report.html import markdown_to_html, table_cell
from genbound.report.serialize import dumps_json
from genbound.report.sweep_reading import (
    detectable_line,
    granulated_cell,
    p_value,
    pairs_line,
    reading_markdown,
    sign_error_cell,
    signed,
    tau_cell,
)
from genbound.sweep_stats import EXACT_MAX_N, N_PERMUTATIONS

SWEEP_SCHEMA = "genbound.sweep/1"
FIGURE = "figures/measures_vs_gap.png"
TARGET = "gap_error"
TABLE_COLUMNS = (
    ("run", "run"),
    ("variant", "variant"),
    ("num_trainable", "D"),
    ("train_error", "train err"),
    ("test_error", "test err"),
    ("gap_error", "gap (0-1) ± se"),
    ("gap_loss", "gap (CE) ± se"),
    ("compression_bound", "compression bound"),
    ("mi_bound", "MI bound"),
    ("log10_phi_dW", "log10 Φ_dW"),
    ("sum_dW_frobenius", "Σ‖dW‖_F"),
)
#: The table of a sweep of causal language models.
LM_TABLE_COLUMNS = (
    ("run", "run"),
    ("variant", "variant"),
    ("num_trainable", "D"),
    ("train_error", "train top-1 err"),
    ("test_error", "test top-1 err"),
    ("gap_loss", "gap (nats/token) ± se"),
    ("gap_error", "gap (top-1) ± se"),
    ("token_bound_bits", "token bound (bits/token)"),
    ("document_bound_bits", "document bound (bits/token)"),
    ("mi_bound", "MI bound"),
    ("sum_dW_frobenius", "Σ‖dW‖_F"),
)
CURVATURE_COLUMNS = (
    ("run", "run"),
    ("hessian_top_eigenvalue", "top eigenvalue"),
    ("hessian_trace", "trace"),
    ("landscape_curvature", "landscape curvature"),
    ("landscape_flat_fraction", "flat fraction"),
    ("landscape_ascent", "mean ascent"),
    ("path_curvature", "path curvature"),
)
TARGET_LABELS = {
    "gap_error": "measured 0-1 gap (test - train)",
    "gap_loss": "measured cross-entropy gap (test - train)",
}
#: The same for a sweep of causal language models.
LM_TARGET_LABELS = {
    "gap_error": "measured top-1 next-token error gap",
    "gap_loss": "measured next-token cross-entropy gap (nats/token)",
}


def causal_lm_sweep(rows: Sequence[Mapping]) -> bool:
    """Whether every run with a measured gap is a causal language model (at least one)."""
    kinds = {r.get("objective") for r in rows if r.get("objective") is not None}
    return kinds == {"causal_lm"}


def sweep_target(rows: Sequence[Mapping]) -> str:
    """The gap the measures are ranked against: the next-token cross-entropy gap for a
    sweep of causal LMs (what their bounds and training are about; the top-1 error of a
    next token moves little), else the 0-1 gap (:data:`TARGET`)."""
    return "gap_loss" if causal_lm_sweep(rows) else TARGET


#: Columns that hold errors or bounds on them (printed never rounded onto 0 or 1).
PROBABILITIES = frozenset({"train_error", "test_error", "compression_bound"})
#: Columns printed with their standard error (``<key>_stderr`` of the row) when it has one.
WITH_STDERR = frozenset({"gap_error", "gap_loss"})
NO_GAP = (
    "No measured gap: pass --data TRAIN TEST (or --task module:function) to compare the "
    "measures against the gap. The table above lists the measures computed without data."
)


def _cell(row: Mapping, key: str) -> str:
    v, se = row.get(key), row.get(f"{key}_stderr")
    if key in WITH_STDERR and v is not None and se is not None:
        return format_pm(v, se)
    text = format_probability(v) if key in PROBABILITIES else format_number(v)
    return f"{text} (vacuous)" if key in row.get("vacuous", ()) else text


def _table(rows: Sequence[Mapping], columns) -> list[str]:
    return [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(r, k) for k, _ in columns) + " |" for r in rows),
    ]


def correlation_markdown(rows: Sequence[Mapping], corr: Sequence[Correlation]) -> list[str]:
    """The ranking of the measures against the gap, or the sentence saying why there is none."""
    if not corr:
        return []
    target = corr[0].target
    lines = ["", f"## Which measure tracks the gap ({target})?", ""]
    if not any(isinstance(r.get(target), (int, float)) for r in rows):
        return [*lines, NO_GAP]
    c0 = corr[0]
    ranked = sorted((c for c in corr if c.informative), key=lambda c: c.rank)
    lines += [
        f"Kendall's tau-b over runs, {c0.level:.0%} percentile bootstrap interval from "
        f"{c0.n_boot} resamples of runs, and the two-sided permutation p-value of tau "
        f"(every ordering of the gaps up to {EXACT_MAX_N} runs; ≈: "
        f"{format_count(N_PERMUTATIONS)} random orderings beyond); "
        "measures ranked by tau (a measure that tracks the gap grows with it: tau near +1, "
        "or near -1 for one that claims the opposite direction). The granulated tau "
        "(Jiang et al. 2020) averages tau within groups of runs that differ in one "
        "hyper-parameter. With few runs the intervals are wide: read them, not the point "
        "estimates.",
        "",
        detectable_line(rows, target),
        "",
    ]
    if ranked:
        lines += [
            "| rank | measure | n | tau [interval], p | granulated tau [interval] "
            "| worst sign-error |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c.rank} | {table_cell(measure_description(c.measure))} | {c.n} | "
            f"{tau_cell(c)} | {granulated_cell(c)} | {sign_error_cell(c)} |"
            for c in ranked
        ]
        if any(c.granulated is None for c in ranked):
            lines += [
                "",
                "Granulated tau is n/a where fewer than two hyper-parameters vary on their own.",
            ]
        pairs = pairs_line(ranked)
        lines += ["", pairs] if pairs else []
        lines += ["", f"![each ranked measure against the gap]({FIGURE})"]
        lines += reading_markdown(corr)
    else:
        lines.append("No measure can be ranked against the gap in this sweep.")
    skipped = [c for c in corr if not c.informative]
    if skipped:
        lines += ["", "Not ranked (uninformative):", ""]
        lines += [f"- {measure_description(c.measure)}: {c.why_uninformative}" for c in skipped]
    return lines


def sweep_markdown(
    rows: list[dict], corr: list[Correlation], certificates: Sequence[Mapping] = ()
) -> str:
    lm = causal_lm_sweep(rows)
    what = (
        "Causal language models: losses are next-token cross-entropies per predicted token, "
        "errors top-1 next-token errors, the token and document bounds are on the smoothed "
        "NLL (vacuous at or above log2 V), and the measures are ranked against the "
        "cross-entropy gap. "
        if lm
        else ""
    )
    lines = [
        "# genbound sweep comparison",
        "",
        f"{len(rows)} checkpoints. Errors and gaps are measured (test - train, same weights, "
        "eval mode). A bound marked (vacuous) is at or above its trivial value in that run "
        "(chance for the compression bound, the loss range for the MI bound). " + what,
        "",
        *_table(rows, LM_TABLE_COLUMNS if lm else TABLE_COLUMNS),
        *certificate_markdown(certificates),
    ]
    if any(r.get(k) is not None for r in rows for k, _ in CURVATURE_COLUMNS[1:]):
        lines += [
            "",
            "## Curvature and landscapes",
            "",
            "Hessian of the mean training loss on each report's curvature subset; landscape "
            "numbers along its random filter-normalised direction and along the path from "
            "the base model (see each report for the space they are taken in). A trace "
            "neither estimate resolves is left out (—).",
            "",
            *_table(rows, CURVATURE_COLUMNS),
        ]
    user = list(dict.fromkeys(k for r in rows for k in r.get("user_measures", ())))
    if user:
        lines += [
            "",
            "## Your measures",
            "",
            "Values of the user measures each report computed (`--measure`, or installed "
            "in the `genbound.measures` entry-point group).",
            "",
            *_table(rows, (("run", "run"), *((k, k) for k in user))),
        ]
    lines += correlation_markdown(rows, corr)
    return "\n".join(lines) + "\n"


def plot_measures(
    rows: list[dict], corr: Sequence[Correlation], path: Path, target: str = TARGET
) -> Path | None:
    """A grid of scatter plots, one per ranked measure, of the measure against ``target``
    with vertical error bars of one standard error of ``target`` (ranked order; a log axis
    where the values span decades). None, and nothing written, when no measure is ranked."""
    from genbound.plotting import new_figure, readable_axis, save_figure

    ranked = sorted((c for c in corr if c.informative), key=lambda c: c.rank)
    if not ranked:
        return None
    cols = min(3, len(ranked))
    nrows = math.ceil(len(ranked) / cols)
    fig = new_figure(4.2 * cols, 3.4 * nrows)
    for i, c in enumerate(ranked):
        ax = fig.add_subplot(nrows, cols, i + 1)
        pts = [
            (r[c.measure], r[target], _stderr_or_nan(r, target), r["run"])
            for r in rows
            if r.get(c.measure) is not None and r.get(target) is not None
        ]
        xs, ys, ses, _ = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=ses, fmt="o", markersize=4, elinewidth=0.8, capsize=2)
        for x, y, _, name in pts:
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.margins(x=0.15, y=0.12)  # room for the run names at the edges
        readable_axis(ax, xs, "x", max_ticks=4)
        readable_axis(ax, [], "y", max_ticks=5)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(measure_description(c.measure), fontsize=8)
        labels = LM_TARGET_LABELS if causal_lm_sweep(rows) else TARGET_LABELS
        ax.set_ylabel(labels.get(target, target), fontsize=8)
        ax.set_title(f"#{c.rank}: tau {signed(c.tau)}, {p_value(c)}", fontsize=9)
    return save_figure(fig, path)


def _stderr_or_nan(row: Mapping, target: str) -> float:
    """The row's standard error of ``target`` (nan, drawn as no bar, when it has none)."""
    se = row.get(f"{target}_stderr")
    return float(se) if isinstance(se, int | float) else math.nan


def write_sweep(out_dir: str | Path, docs: Mapping[str, Mapping], *, seed: int = 0) -> Path:
    """Write ``sweep.json``, ``sweep.md``, ``sweep.html`` (sweep.md with the figure
    embedded) and (when a measure is ranked) ``figures/measures_vs_gap.png``, atomically:
    the folder is filled beside ``out_dir`` and replaces it whole."""
    rows = sweep_rows(docs)
    target = sweep_target(rows)
    corr = rank_correlations(rows, target=target, seed=seed) if len(rows) >= 2 else []
    certs = certificate_rows(docs)
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        doc = {"schema": SWEEP_SCHEMA, "rows": rows, "correlations": corr, "certificates": certs}
        (tmp / "sweep.json").write_text(dumps_json(doc))
        md = sweep_markdown(rows, corr, certs)
        (tmp / "sweep.md").write_text(md)
        (tmp / "figures").mkdir()
        plot_measures(rows, corr, tmp / FIGURE, target)
        (tmp / "sweep.html").write_text(markdown_to_html(md, tmp, "genbound sweep comparison"))
    return out
