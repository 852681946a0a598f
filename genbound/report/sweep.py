"""The sweep comparison: one table (run x measure), Kendall's tau of every measure against
the measured gap, and a figure of each measure against the gap."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from genbound.compare import MEASURES, Correlation, rank_correlations, sweep_rows
from genbound.io import atomic_directory
from genbound.report.serialize import jsonable

SWEEP_SCHEMA = "genbound.sweep/1"
TABLE_COLUMNS = (
    ("run", "run"),
    ("variant", "variant"),
    ("num_trainable", "D"),
    ("train_error", "train err"),
    ("test_error", "test err"),
    ("gap_error", "gap (0-1)"),
    ("gap_loss", "gap (CE)"),
    ("compression_bound", "compression bound"),
    ("mi_bound", "MI bound"),
    ("log10_phi_dW", "log10 Φ_dW"),
    ("sum_dW_frobenius", "Σ‖dW‖_F"),
)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def sweep_markdown(rows: list[dict], corr: list[Correlation]) -> str:
    lines = [
        "# genbound sweep comparison",
        "",
        f"{len(rows)} checkpoints. Errors and gaps are measured (test - train, same weights, eval mode).",
        "",
        "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in TABLE_COLUMNS) + " |")
    if corr:
        c0 = corr[0]
        lines += [
            "",
            f"## Which measure tracks the gap ({c0.target})?",
            "",
            f"Kendall's tau-b over runs, {c0.level:.0%} percentile bootstrap interval from "
            f"{c0.n_boot} resamples of runs. With few runs the intervals are wide: read them, "
            "not the point estimates.",
            "",
            "| measure | n | tau | interval | granulated tau |",
            "|---|---|---|---|---|",
        ]
        for c in corr:
            g = (
                f"{c.granulated:.3f}"
                if c.granulated is not None
                else "n/a (one hyper-parameter varies)"
            )
            lines.append(
                f"| {MEASURES[c.measure][1]} | {c.n} | {_fmt(c.tau)} | "
                f"[{_fmt(c.low)}, {_fmt(c.high)}] | {g} |"
            )
    return "\n".join(lines) + "\n"


def plot_measures(rows: list[dict], path: Path, target: str = "gap_error") -> None:
    """A grid of scatter plots: each measure (log scale where positive) against ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in MEASURES if sum(r.get(m) is not None for r in rows) >= 2]
    cols = 3
    nrows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, names, strict=False):
        pts = [
            (r[m], r[target], r["run"])
            for r in rows
            if r.get(m) is not None and r.get(target) is not None
        ]
        xs, ys, _ = zip(*pts, strict=True) if pts else ((), (), ())
        ax.scatter(xs, ys)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(MEASURES[m][1], fontsize=8)
        ax.set_ylabel(target, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep(out_dir: str | Path, docs: Mapping[str, Mapping], *, seed: int = 0) -> Path:
    """Write ``sweep.json``, ``sweep.md`` and ``figures/measures_vs_gap.png`` atomically."""
    rows = sweep_rows(docs)
    corr = rank_correlations(rows, seed=seed) if len(rows) >= 2 else []
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        doc = {
            "schema": SWEEP_SCHEMA,
            "rows": jsonable(rows),
            "correlations": jsonable(corr),
        }
        (tmp / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "sweep.md").write_text(sweep_markdown(rows, corr))
        (tmp / "figures").mkdir()
        plot_measures(rows, tmp / "figures" / "measures_vs_gap.png")
    return out
