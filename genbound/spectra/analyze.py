"""Per-layer spectra of a checkpoint's updates, one layer at a time.

For each matrix update dW (n x m): its exact singular values (factor space), spectral
and Frobenius norms, stable rank, effective rank, and, with the base model, the ratios
||dW|| / ||W0||, the principal angles between dW's and W0's top left singular subspaces,
and the intruder dimensions of W0 + dW. W0 is read, used and released layer by layer;
``workers`` layers (default: one per core) are analysed side by side on single-threaded
workers, so peak memory stays near that many of the largest layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from genbound.checkpoint.model import Checkpoint
from genbound.checkpoint.updates import Update
from genbound.errors import GenboundError
from genbound.parallel import default_workers, threaded_map
from genbound.spectra.basecache import BaseSpectrum, BaseSpectrumCache
from genbound.spectra.esd import NotApplicable, PowerLawFit, fit_power_law
from genbound.spectra.intruders import DEFAULT_EPS, Intruders, intruders_from_cosines
from genbound.spectra.topk import TopSingular, top_singular

log = logging.getLogger(__name__)

Progress = Callable[[Iterable, int], Iterable]


@dataclass(frozen=True)
class LayerSpectrum:
    """Spectral measures of one update dW (n x m).

    Attributes:
        name, kind, shape: as in the checkpoint (shape = (n, m), outputs x inputs).
        singular_values: exact, float64, descending, length min(n, m, rank bound).
        spectral_norm: ||dW||_2.  frobenius_norm: ||dW||_F.
        stable_rank: ||dW||_F^2 / ||dW||_2^2 (0 for dW = 0).
        effective_rank: exp(entropy of s / sum(s)) (Roy & Vetterli 2007; 0 for dW = 0).
        esd: power-law fit of dW's ESD, or NotApplicable with the reason.
        base_spectral_norm, base_frobenius_norm: ||W0|| (None without a base model).
        relative_spectral, relative_frobenius: ||dW|| / ||W0|| (None without a base model).
        principal_cosines: cosines of the principal angles between the top-q left singular
            subspaces of dW and W0, q = number of nonzero singular values of dW (at most k).
        base_esd: power-law fit of W0's ESD (None without a base model).
        intruders: intruder dimensions of W0 + dW (None without a base model).
        top: the top-k triplets of W0 + dW with residuals and a converged flag.
        unavailable: why base-relative fields are None, if they are.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    singular_values: np.ndarray
    spectral_norm: float
    frobenius_norm: float
    stable_rank: float
    effective_rank: float
    esd: PowerLawFit | NotApplicable
    base_spectral_norm: float | None = None
    base_frobenius_norm: float | None = None
    relative_spectral: float | None = None
    relative_frobenius: float | None = None
    principal_cosines: np.ndarray | None = None
    base_esd: PowerLawFit | NotApplicable | None = None
    intruders: Intruders | None = None
    top: TopSingular | None = field(default=None, repr=False)
    unavailable: str | None = None


@dataclass(frozen=True)
class SpectraResult:
    """Spectra of every matrix update of a checkpoint.

    Attributes:
        layers: one :class:`LayerSpectrum` per matrix update, in checkpoint order.
        skipped: names of updates that are not matrices (biases, norms), with why.
        k, eps: intruder settings.
        cache_hits, cache_misses: W0 spectra found in / added to the cache.
        seconds: wall time.
    """

    layers: tuple[LayerSpectrum, ...]
    skipped: tuple[tuple[str, str], ...]
    k: int
    eps: tuple[float, ...]
    cache_hits: int
    cache_misses: int
    seconds: float

    def layer(self, name: str) -> LayerSpectrum:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)


def rank_measures(s: np.ndarray) -> tuple[float, float, float, float]:
    """(spectral norm, Frobenius norm, stable rank, effective rank) from singular values."""
    s = np.asarray(s, dtype=np.float64)
    spec = float(s[0]) if s.size else 0.0
    frob = float(np.sqrt(np.sum(s**2)))
    if spec == 0.0:
        return spec, frob, 0.0, 0.0
    p = s[s > 0] / s.sum()
    return spec, frob, frob**2 / spec**2, float(np.exp(-np.sum(p * np.log(p))))


def principal_cosines(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between span(a) and span(b) (orthonormal columns)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.clip(np.linalg.svd(a.T @ b, compute_uv=False), 0.0, 1.0)


def layer_spectrum(
    update: Update,
    w0: torch.Tensor | None = None,
    base: BaseSpectrum | None = None,
    *,
    k: int = 10,
    eps: Sequence[float] = DEFAULT_EPS,
    dense_threshold: int = 512,
    seed: int = 0,
) -> LayerSpectrum:
    """Measures of one matrix update; base-relative ones when ``w0`` and its ``base`` spectrum are given."""
    relative = w0 is not None and base is not None
    svd = update.svd() if relative else None
    s = svd.S if svd is not None else update.singular_values()
    spec, frob, stable, eff = rank_measures(s)
    common = dict(
        name=update.name,
        kind=update.kind,
        shape=tuple(update.shape),
        singular_values=s,
        spectral_norm=spec,
        frobenius_norm=frob,
        stable_rank=stable,
        effective_rank=eff,
        esd=fit_power_law(s),
    )
    if not relative:
        why = "tensor new to the model (no pretrained W0)" if update.is_new else "no base model"
        return LayerSpectrum(**common, unavailable=why)
    w0 = w0.to(torch.float64)  # once: every product with W0 below is in float64
    q = int(min(k, np.sum(svd.S > 1e-12 * max(spec, 1e-300)), base.kept))
    cos = principal_cosines(svd.U[:, :q], base.left_vectors(w0, q)) if q else np.zeros(0)
    top = top_singular(w0, update, k, base=base, dense_threshold=dense_threshold, seed=seed)
    cosines = base.left_cosines(w0, top.U).numpy()
    base_spec, base_frob = base.spectral_norm, base.frobenius_norm
    return LayerSpectrum(
        **common,
        base_spectral_norm=base_spec,
        base_frobenius_norm=base_frob,
        relative_spectral=spec / base_spec if base_spec > 0 else None,
        relative_frobenius=frob / base_frob if base_frob > 0 else None,
        principal_cosines=cos,
        base_esd=fit_power_law(base.S),
        intruders=intruders_from_cosines(cosines, top.S, update.shape[0], eps),
        top=top,
    )


def analyze_spectra(
    checkpoint: Checkpoint,
    *,
    k: int = 10,
    eps: Sequence[float] = DEFAULT_EPS,
    cache: BaseSpectrumCache | None = None,
    use_base: bool = True,
    base_svd: str = "compute",
    dense_threshold: int = 512,
    workers: int | None = None,
    progress: Progress | None = None,
) -> SpectraResult:
    """Spectra of every matrix update of ``checkpoint``, one layer at a time.

    Args:
        k: top singular vectors of W0 + dW examined for intruders.
        eps: intruder thresholds (one pass serves them all).
        cache: where W0 spectra are kept (default: the user cache directory).
        use_base: False skips base-relative measures even when the base model is known.
        base_svd: ``"compute"`` (W0's SVD from the cache, else computed and cached) or
            ``"cached"`` (only layers whose W0 SVD is already cached get base-relative
            measures and intruders; nothing is computed, e.g. inside a training loop).
        workers: layers analysed at once, each on one thread (default: torch's thread
            count; see ``genbound.parallel``). Peak memory grows with it, by about one
            layer's working set per worker.
        progress: optional wrapper ``progress(iterable, total)`` (the CLI's progress bar).
    """
    if base_svd not in ("compute", "cached"):
        raise GenboundError(f"base_svd must be 'compute' or 'cached'; found {base_svd!r}.")
    start = time.perf_counter()
    cache = cache if cache is not None else BaseSpectrumCache()
    hits0, misses0 = cache.hits, cache.misses
    with_base = use_base and checkpoint.base is not None
    matrices = [u for u in checkpoint.updates.values() if u.is_matrix]
    skipped = tuple(
        (u.name, "not a matrix (vector update)")
        for u in checkpoint.updates.values()
        if not u.is_matrix
    )

    def one(u: Update) -> LayerSpectrum:
        if not (with_base and not u.is_new):
            return layer_spectrum(u, k=k, eps=eps)
        w0 = u.base_weight(torch.float32)
        spec = cache.get(w0) if base_svd == "compute" else cache.peek(w0)
        if spec is None:
            return layer_spectrum(u, k=k, eps=eps)
        return layer_spectrum(u, w0, spec, k=k, eps=eps, dense_threshold=dense_threshold)

    it = threaded_map(one, matrices, workers if workers is not None else default_workers())
    out = tuple(progress(it, len(matrices)) if progress is not None else it)
    return SpectraResult(
        layers=out,
        skipped=skipped,
        k=k,
        eps=tuple(sorted(eps)),
        cache_hits=cache.hits - hits0,
        cache_misses=cache.misses - misses0,
        seconds=time.perf_counter() - start,
    )
