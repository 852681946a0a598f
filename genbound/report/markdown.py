"""``report.md``: the measures of one checkpoint as Markdown tables and sentences.

Each measure writes its own lines (:meth:`genbound.measures.base.Measure.markdown`); this
module puts them in their sections, in :data:`genbound.measures.base.SECTIONS` order.
"""

from __future__ import annotations

from genbound.measures.base import SECTIONS
from genbound.measures.run import Measures
from genbound.report.reading import reading_lines


def section_lines(measures: Measures, section: str) -> list[str]:
    """The lines every computed measure of ``section`` gives, in registry order."""
    lines: list[str] = []
    for m in measures.measures():
        result = measures.result(m.name)
        if m.section == section and result is not None:
            lines += m.markdown(result, measures)
    return lines


def gap_markdown(measures: Measures) -> list[str]:
    return section_lines(measures, "gap")


def compression_markdown(measures: Measures) -> list[str]:
    return section_lines(measures, "compression")


def spectra_markdown(measures: Measures) -> list[str]:
    return section_lines(measures, "spectra")


def curvature_markdown(measures: Measures) -> list[str]:
    """The curvature and landscape sections."""
    return section_lines(measures, "curvature") + section_lines(measures, "landscape")


def bounds_markdown(measures: Measures) -> list[str]:
    """The bounds as bullets, then what was not computed and why, then the warnings."""
    lines = ["", "## Bounds", "", *section_lines(measures, "bounds")]
    for part, why in measures.skipped.items():
        lines.append(f"- {part}: not computed: {why}")
    mi = measures.mi
    for w in (*measures.warnings, *(mi.warnings if mi is not None else ())):
        lines.append(f"- warning: {w}")
    return lines


def user_markdown(measures: Measures) -> list[str]:
    """The user measures' table (none without user measures)."""
    rows = section_lines(measures, "measures")
    if not rows:
        return []
    return ["", "## Your measures", "", "| measure | value | what |", "|---|---|---|", *rows]


_SECTION_MARKDOWN = {
    "gap": gap_markdown,
    "compression": compression_markdown,
    "bounds": bounds_markdown,
    "curvature": lambda m: section_lines(m, "curvature"),
    "landscape": lambda m: section_lines(m, "landscape"),
    "spectra": spectra_markdown,
    "measures": user_markdown,
}
assert tuple(_SECTION_MARKDOWN) == SECTIONS


def _subspace_lines(sub: dict | None) -> list[str]:
    if not sub:
        return []
    links = f", one z per link ({sub['links']} links)" if sub["links"] > 1 else ""
    return [
        f"- subspace run: only z (d = {sub['d']:,}{links}) trained; the adapter's "
        f"{sub['D']:,} scalars are theta_0 + P z ({sub['kind']} projection, seed "
        f"{sub['seed']}), so bounds count and code z"
    ]


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
        *_subspace_lines(info.get("subspace")),
        f"- stored dtype: {info['dtype']} ({info['bits_per_param']} bits per parameter)",
        f"- training {measures.gap.unit if measures.gap is not None else 'examples'}: "
        f"{f'{n:,} ({measures.n_train_source})' if n is not None else 'unknown'}"
        + (
            f", {measures.gap.train.n_tokens:,.0f} {measures.gap.weight_unit}"
            if measures.gap is not None and measures.gap.weight_unit is not None
            else ""
        ),
        f"- data: {measures.task or 'none (data-free report)'}",
    ]
    reading = reading_lines(measures)
    if reading:
        lines += ["", "## What the numbers say", "", *reading]
    for section in SECTIONS:
        lines += _SECTION_MARKDOWN[section](measures)
    return "\n".join(lines) + "\n"
