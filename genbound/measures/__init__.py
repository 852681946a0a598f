"""Measures of a checkpoint: one module each, one registry, one way to compute them.

Each measure (:class:`~genbound.measures.base.Measure`) declares what it needs, how it is
computed, its ``report.json`` entries, its ``report.md`` section, the scalars it gives
sweeps and the values it gives training callbacks. genbound's own, in registry order:

* ``size`` (:mod:`~genbound.measures.checkpoint_size`): D, the trained scalars;
* ``mi`` (:mod:`~genbound.measures.mi`): MI and Occam bounds (needs N);
* ``compression`` (:mod:`~genbound.measures.compression`): the compression PAC-Bayes bound;
* ``pacbayes`` (:mod:`~genbound.measures.gaussian`): the Gaussian PAC-Bayes certificate;
* ``theorem1`` (:mod:`~genbound.measures.theorem1`): the corrected Theorem 1 terms;
* ``spectra`` (:mod:`~genbound.measures.spectra`): spectra of dW and intruder dimensions;
* ``curvature`` (:mod:`~genbound.measures.curvature`): Hessian top eigenvalue, trace, density;
* ``landscape`` (:mod:`~genbound.measures.landscape`): 1-D loss slices;
* ``distance`` (:mod:`~genbound.measures.distance`): how far the trained tensors and the
  merged weights moved from their start;
* ``hessian_distance`` (:mod:`~genbound.measures.hessian_distance`): Ju et al.'s
  Hessian-weighted distance from the pretrained weights;
* ``sharpness`` (:mod:`~genbound.measures.sharpness`): Jiang et al.'s PAC-Bayes flatness
  and sharpness, plain and magnitude-aware;
* ``sharpness`` (:mod:`~genbound.measures.sharpness`): PAC-Bayes flatness and sharpness;
* ``gap`` (:mod:`~genbound.measures.gap`): the empirical gap.

User measures: :mod:`genbound.measures.user` (and docs/measures.md).
"""

from __future__ import annotations

# isort: off
# Importing a measure's module registers it; this order is the order of the sweep's
# scalars and of the report's sections within each section.
from genbound.measures import checkpoint_size  # noqa: F401
from genbound.measures import mi  # noqa: F401
from genbound.measures import compression  # noqa: F401
from genbound.measures import token_bound  # noqa: F401
from genbound.measures import gaussian  # noqa: F401
from genbound.measures import theorem1  # noqa: F401
from genbound.measures import spectra  # noqa: F401
from genbound.measures import curvature  # noqa: F401
from genbound.measures import landscape  # noqa: F401
from genbound.measures import distance  # noqa: F401
from genbound.measures import hessian_distance  # noqa: F401
from genbound.measures import sharpness  # noqa: F401
from genbound.measures import gap  # noqa: F401

# isort: on
from genbound.measures.base import SECTIONS, Measure, Scalar
from genbound.measures.context import MeasureContext
from genbound.measures.registry import get_measure, register_measure, registered, sweep_scalars
from genbound.measures.run import Measures, measure_checkpoint

__all__ = [
    "SECTIONS",
    "Measure",
    "MeasureContext",
    "Measures",
    "Scalar",
    "get_measure",
    "measure_checkpoint",
    "register_measure",
    "registered",
    "sweep_scalars",
]
