"""Compute the measures of one checkpoint (see :mod:`genbound.measures`).

Kept for existing imports: :func:`measure_checkpoint` and :class:`Measures` live in
:mod:`genbound.measures.run`, each measure in its own module of :mod:`genbound.measures`.
"""

from __future__ import annotations

from genbound.measures.context import Stage, no_stage
from genbound.measures.curvature import Curvature, hessian_curvature, trace_summary
from genbound.measures.landscape import base_values
from genbound.measures.run import Measures, measure_checkpoint
from genbound.options import CURVATURE_SPACES

#: The curvature of one objective (the name older code and tests use).
_curvature = hessian_curvature

__all__ = [
    "CURVATURE_SPACES",
    "Curvature",
    "Measures",
    "Stage",
    "base_values",
    "measure_checkpoint",
    "no_stage",
    "trace_summary",
]
