"""A short plain-language reading of one checkpoint's measures: what they say and what not.

Each measure gives its own sentences (:meth:`genbound.measures.base.Measure.reading`);
they are read in :data:`READING_ORDER`: what was measured, the bounds, then what the
weights and the curvature say.
"""

from __future__ import annotations

from genbound.measures.run import Measures
from genbound.measures.spectra import intruder_sentence

__all__ = ["READING_ORDER", "intruder_sentence", "reading_lines"]

#: Sections (:data:`genbound.measures.base.SECTIONS`) in the order they are read.
READING_ORDER = ("gap", "compression", "bounds", "spectra", "curvature", "landscape", "measures")


def reading_lines(measures: Measures) -> list[str]:
    """Sentences (Markdown bullets) interpreting the computed measures; none for missing parts."""
    out: list[str] = []
    for section in READING_ORDER:
        for m in measures.measures():
            result = measures.result(m.name)
            if m.section == section and result is not None:
                out += m.reading(result, measures)
    return [f"- {line}" for line in out]
