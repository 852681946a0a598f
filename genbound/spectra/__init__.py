"""Weight-update spectra: exact singular values in factor space, intruder dimensions, ESD fits.

``analyze_spectra(checkpoint)`` measures every matrix update one layer at a time; W0's
spectra are cached on disk (``BaseSpectrumCache``) and reused by every checkpoint of the
same base model.
"""

from genbound.spectra.analyze import (
    LayerSpectrum,
    SpectraResult,
    analyze_spectra,
    layer_spectrum,
    rank_measures,
)
from genbound.spectra.basecache import BaseSpectrum, BaseSpectrumCache, compute_base_spectrum
from genbound.spectra.esd import NotApplicable, PowerLawFit, fit_power_law
from genbound.spectra.intruders import DEFAULT_EPS, Intruders, count_intruders
from genbound.spectra.topk import TopSingular, block_krylov, top_singular

__all__ = [
    "DEFAULT_EPS",
    "BaseSpectrum",
    "BaseSpectrumCache",
    "Intruders",
    "LayerSpectrum",
    "NotApplicable",
    "PowerLawFit",
    "SpectraResult",
    "TopSingular",
    "analyze_spectra",
    "block_krylov",
    "compute_base_spectrum",
    "count_intruders",
    "fit_power_law",
    "layer_spectrum",
    "rank_measures",
    "top_singular",
]
