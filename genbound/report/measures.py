"""Compute the data-free measures of one checkpoint for a report, recording what was skipped and why."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from genbound.bounds import MIBoundResult, Theorem1Result, mi_bound, theorem1_from_checkpoint
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError
from genbound.spectra import SpectraResult, analyze_spectra
from genbound.spectra.analyze import Progress


@dataclass(frozen=True)
class DataFreeMeasures:
    """Spectra and the data-free bounds of one checkpoint.

    Attributes:
        spectra: per-layer spectra and intruders.
        mi: MI and Occam bounds (0-1 loss), or None (see ``skipped``).
        theorem1: the corrected Theorem 1 correction terms, or None (see ``skipped``).
        skipped: part name -> why it was not computed.
        seconds: wall time per part.
    """

    spectra: SpectraResult
    mi: MIBoundResult | None
    theorem1: Theorem1Result | None
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def data_free_measures(ckpt: Checkpoint, *, progress: Progress | None = None) -> DataFreeMeasures:
    """Every measure that needs no data: spectra, the MI bound (if N is known), Theorem 1 (with a base)."""
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    t = time.perf_counter()
    spectra = analyze_spectra(ckpt, progress=progress)
    seconds["spectra"] = time.perf_counter() - t

    def attempt(part: str, fn: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        except GenboundError as exc:
            skipped[part] = str(exc)
            return None
        finally:
            seconds[part] = time.perf_counter() - start

    mi = attempt("mi_bound", lambda: mi_bound(ckpt, loss="zero_one"))
    known = {
        x.name: (x.base_spectral_norm if x.base_spectral_norm is not None else 0.0, x.spectral_norm)
        for x in spectra.layers
        if x.base_spectral_norm is not None or ckpt.updates[x.name].is_new
    }
    thm = attempt("theorem1", lambda: theorem1_from_checkpoint(ckpt, known=known))
    return DataFreeMeasures(spectra=spectra, mi=mi, theorem1=thm, skipped=skipped, seconds=seconds)
