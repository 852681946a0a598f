"""The singular spectrum and singular vectors of each base weight W0, cached on disk.

Every checkpoint of one base model needs the same U0 and S0 (intruder dimensions,
||dW|| / ||W0||, principal angles). They are computed once and stored under a key made
from the layer's content (a BLAKE2b hash of W0's bytes, shape and dtype): the key names
the layer of that base model wherever its file lives, and a changed file never matches
a stale entry.

Two ways to compute, by size:

* ``min(n, m) <= exact_threshold`` (default 1024): a float64 SVD, exact.
* larger: the eigendecomposition of the smaller Gram matrix (W0 W0^T or W0^T W0) in
  float32, 3 to 5 times cheaper than a float32 SVD at 2048 x 5632 on 2 cores.

Only the basis of the smaller side is stored: U0 (n x n) when n <= m, else V0 (m x m).
For a tall W0 the left vectors are never formed as a whole (at 5632 x 2048 that would
cost as much as the Gram matrix and triple the cache); a product U0^T X is taken as
diag(1 / S0) V0^T (W0^T X), which is exact for every direction with S0 > 0. Directions
with S0 < 1e-3 S0[0] (where float32 Gram eigenvalues are rounding noise) are left out
of such products and counted in ``n_dropped``. Cosines are accurate to about 1e-4.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 3

#: Left directions of a tall W0 with S0 below this share of S0[0] are not used (float32 noise).
KEEP_RELATIVE = 1e-3


@dataclass(frozen=True)
class BaseSpectrum:
    """W0's singular values and the singular vectors of its smaller side.

    Attributes:
        key: content key of W0 (see module docstring).
        S: all min(n, m) singular values, float64, descending.
        U: for n <= m, all n left singular vectors (n x n, float32); else None.
        method: ``"svd-float64"`` or ``"gram-eigh-float32"``.
        n_dropped: left directions left out of products (S0 < KEEP_RELATIVE S0[0], n > m).
        V: for n > m, all m right singular vectors (m x m, float32); else None.

    U or V is a full orthonormal basis of the smaller side, in which (W0 + dW)'s Gram
    matrix is diagonal plus low rank (see ``genbound.spectra.topk``).
    """

    key: str
    S: np.ndarray
    U: np.ndarray | None
    method: str
    n_dropped: int = 0
    V: np.ndarray | None = None

    def small_side_basis(self, n: int, m: int) -> np.ndarray | None:
        """The full orthonormal basis of the smaller side (U0 if n <= m, else V0), if stored."""
        if n <= m:
            return self.U if self.U is not None and self.U.shape == (n, n) else None
        return self.V if self.V is not None and self.V.shape == (m, m) else None

    @property
    def kept(self) -> int:
        """Left singular directions available to :meth:`left_vectors` and :meth:`left_cosines`."""
        return int(self.S.size - self.n_dropped)

    def left_vectors(self, w0: torch.Tensor, q: int) -> torch.Tensor:
        """The top-q left singular vectors of W0 (n x q, float64); q <= ``kept``."""
        if self.U is not None:
            return torch.from_numpy(self.U[:, :q]).to(torch.float64)
        v = torch.from_numpy(self.V[:, :q]).to(torch.float64)
        return (w0.to(torch.float64) @ v) / torch.from_numpy(self.S[:q])

    def left_cosines(self, w0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """U0^T x for x (n x k): ``kept`` x k, float64; no n x n or n x m basis is formed."""
        x = x.to(torch.float64)
        if self.U is not None:
            return torch.from_numpy(self.U).to(torch.float64).T @ x
        r = self.kept
        v = torch.from_numpy(self.V[:, :r]).to(torch.float64)
        return (v.T @ (w0.to(torch.float64).T @ x)) / torch.from_numpy(self.S[:r])[:, None]

    @property
    def spectral_norm(self) -> float:
        return float(self.S[0]) if self.S.size else 0.0

    @property
    def frobenius_norm(self) -> float:
        return float(np.sqrt(np.sum(self.S**2)))


def content_key(w0: torch.Tensor) -> str:
    """BLAKE2b of W0's bytes, shape and dtype (math orientation, as given)."""
    t = w0.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{FORMAT_VERSION}:{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def compute_base_spectrum(
    w0: torch.Tensor, *, exact_threshold: int = 1024, key: str | None = None
) -> BaseSpectrum:
    """The spectrum of W0 (n x m, math orientation); see the module docstring for the method."""
    key = key or content_key(w0)
    n, m = w0.shape
    if min(n, m) <= exact_threshold:
        method = "svd-float64"
        u, s, vh = torch.linalg.svd(w0.detach().to(torch.float64), full_matrices=False)
        vecs = vh.T if n > m else u
    else:
        method = "gram-eigh-float32"
        w = w0.detach().to(torch.float32)
        evals, vecs = torch.linalg.eigh(w @ w.T if n <= m else w.T @ w)
        s = evals.flip(0).clamp_min(0).to(torch.float64).sqrt()
        vecs = vecs.flip(1)
    vecs = vecs.to(torch.float32).contiguous().numpy()
    if n <= m:
        return BaseSpectrum(key=key, S=s.numpy(), U=vecs, method=method)
    keep = int((s > KEEP_RELATIVE * s[0]).sum()) if s.numel() else 0
    return BaseSpectrum(
        key=key, S=s.numpy(), U=None, method=method, n_dropped=int(s.numel() - keep), V=vecs
    )


def default_cache_dir() -> Path:
    """``$GENBOUND_CACHE/base-svd``, else ``$XDG_CACHE_HOME/genbound/base-svd``, else ``~/.cache/...``."""
    root = os.environ.get("GENBOUND_CACHE")
    if root:
        return Path(root) / "base-svd"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "genbound" / "base-svd"


class BaseSpectrumCache:
    """On-disk cache of :class:`BaseSpectrum` by content key (``root=None``: no caching).

    ``hits`` and ``misses`` count lookups; a miss computes and stores the spectrum
    (written to a temporary file, then renamed, so a crash never leaves a bad entry).
    """

    def __init__(self, root: str | Path | None = "default", *, exact_threshold: int = 1024):
        self.root = (
            default_cache_dir() if root == "default" else (Path(root) if root is not None else None)
        )
        self.exact_threshold = exact_threshold
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # counters; analyze_spectra may look up from threads

    def _path(self, key: str) -> Path | None:
        return self.root / key[:2] / f"{key}.npz" if self.root is not None else None

    def peek(self, w0: torch.Tensor) -> BaseSpectrum | None:
        """The cached spectrum of ``w0``, or None when it is not cached (nothing computed)."""
        return self._lookup(content_key(w0), count_miss=False)

    def _lookup(self, key: str, *, count_miss: bool = True) -> BaseSpectrum | None:
        path = self._path(key)
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    spec = BaseSpectrum(
                        key=key,
                        S=z["S"],
                        U=z["U"] if "U" in z.files else None,
                        method=str(z["method"]),
                        n_dropped=int(z["n_dropped"]),
                        V=z["V"] if "V" in z.files else None,
                    )
                with self._lock:
                    self.hits += 1
                return spec
            except (OSError, KeyError, ValueError) as exc:
                log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None

    def get(self, w0: torch.Tensor) -> BaseSpectrum:
        """The spectrum of ``w0``: from the cache, else computed and stored."""
        key = content_key(w0)
        found = self._lookup(key)
        if found is not None:
            return found
        path = self._path(key)
        with self._lock:
            self.misses += 1
        spec = compute_base_spectrum(w0, exact_threshold=self.exact_threshold, key=key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            vectors = {"U": spec.U} if spec.U is not None else {"V": spec.V}
            # A unique temporary name: two threads may store the same key (equal layers).
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    S=spec.S,
                    method=np.array(spec.method),
                    n_dropped=np.array(spec.n_dropped),
                    **vectors,
                )
            Path(tmp).replace(path)
        return spec
