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

Each entry (``<root>/<key[:2]>/<key>.npz``) stores, beside the arrays, the format version,
its key, W0's shape (n, m) and a BLAKE2b checksum of every stored array (name, dtype, shape
and bytes). An entry is used only when it reads back whole and every check passes (version,
key, shapes of S and of U or V against (n, m), the checksum, finite values, a known method,
sum(S^2) against ||W0||_F^2);
any other entry is reported in a warning, recomputed and replaced. Entries are written to a
hidden temporary file (``.<key>.*.npz``) that is renamed into place; temporary files older
than :data:`STALE_TEMP_SECONDS` (left by a killed writer) are removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genbound.cache import cache_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 4

#: How each way of computing is named in an entry.
METHODS = ("svd-float64", "gram-eigh-float32")

#: Relative accuracy of sum(S^2) against ||W0||_F^2 for each method (float32 Gram
#: eigenvalues carry rounding of about 1e-6 of the largest).
FROBENIUS_RTOL = {"svd-float64": 1e-9, "gram-eigh-float32": 1e-4}

#: Stored singular vectors checked against W0 on read: the top few must be orthonormal and
#: W0 must stretch each by its singular value (to ``VECTOR_RTOL`` of S[0]; vectors are
#: stored in float32, and a vector's stretch errs only to second order in its own error).
VECTOR_CHECKS = 4
VECTOR_RTOL = 1e-3

#: A hidden temporary entry older than this (seconds) was left by a killed writer: a writer
#: creates its file only once the spectrum is computed, and fills it in well under a minute.
STALE_TEMP_SECONDS = 600

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
    """``base-svd`` in genbound's cache folder (:func:`genbound.cache.cache_root`)."""
    return cache_root() / "base-svd"


class BaseSpectrumCache:
    """On-disk cache of :class:`BaseSpectrum` by content key (``root=None``: no caching).

    ``hits`` and ``misses`` count lookups; a miss computes and stores the spectrum (written
    to a temporary file, then renamed, so a crash never leaves a partial entry). An entry
    that fails verification on read (see the module docstring) counts as a miss: it is
    logged, recomputed and replaced.
    """

    def __init__(self, root: str | Path | None = "default", *, exact_threshold: int = 1024):
        self.root = (
            default_cache_dir() if root == "default" else (Path(root) if root is not None else None)
        )
        self.exact_threshold = exact_threshold
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # counters; analyze_spectra may look up from threads
        self._swept = False

    def _path(self, key: str) -> Path | None:
        return self.root / key[:2] / f"{key}.npz" if self.root is not None else None

    def peek(self, w0: torch.Tensor) -> BaseSpectrum | None:
        """The cached spectrum of ``w0``, or None when it is not cached (nothing computed;
        an entry that fails verification is removed)."""
        return self._lookup(content_key(w0), w0, remove_bad=True)

    def _lookup(
        self, key: str, w0: torch.Tensor, *, remove_bad: bool = False
    ) -> BaseSpectrum | None:
        """The verified entry of ``key`` for ``w0``, or None (absent or bad; a bad
        one is recomputed by :meth:`get`, or removed when ``remove_bad``)."""
        path = self._path(key)
        if path is None:
            return None
        self._sweep_stale_temps()
        if not path.exists():
            return None
        try:
            spec = read_entry(path, key, w0)
        except BadEntry as exc:
            action = "removing it" if remove_bad else "recomputing it"
            log.warning("base-SVD cache entry %s is invalid (%s); %s", path, exc, action)
            if remove_bad:
                path.unlink(missing_ok=True)
            return None
        with self._lock:
            self.hits += 1
        return spec

    def get(self, w0: torch.Tensor) -> BaseSpectrum:
        """The spectrum of ``w0``: from the cache, else computed and stored."""
        key = content_key(w0)
        found = self._lookup(key, w0)
        if found is not None:
            return found
        with self._lock:
            self.misses += 1
        spec = compute_base_spectrum(w0, exact_threshold=self.exact_threshold, key=key)
        path = self._path(key)
        if path is not None:
            try:
                write_entry(path, spec, tuple(w0.shape))
            except OSError as exc:
                log.warning("cannot store base-SVD cache entry %s (%s)", path, exc)
        return spec

    def _sweep_stale_temps(self) -> None:
        """Once per cache object: remove temporary entries that killed writers left."""
        if self._swept:
            return
        self._swept = True
        remove_stale_temps(self.root)


class BadEntry(Exception):
    """A cache entry that cannot be used; the message says why."""


_TEMP_NAME = re.compile(r"^\.[0-9a-f]{40}\..*\.npz$")


def remove_stale_temps(root: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete hidden temporary entries (``<root>/xx/.<key>.*.npz``) not modified for
    ``max_age`` seconds; files being written now are younger and kept. Returns the paths."""
    removed: list[Path] = []
    now = time.time()
    for tmp in root.glob("??/.*.npz"):
        if not _TEMP_NAME.match(tmp.name):
            continue
        try:
            if now - tmp.stat().st_mtime < max_age:
                continue
            tmp.unlink()
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        log.warning("removed a temporary base-SVD cache file left by an interrupted run: %s", tmp)
        removed.append(tmp)
    return removed


def entry_checksum(arrays: dict[str, np.ndarray]) -> str:
    """BLAKE2b over each array (sorted by name; ``checksum`` itself excluded): its name,
    dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(arrays):
        if name == "checksum":
            continue
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_entry(path: Path, spec: BaseSpectrum, shape: tuple[int, int]) -> None:
    """Store ``spec`` (of a W0 of ``shape``) at ``path``: a temporary file renamed into place."""
    vectors = {"U": spec.U} if spec.U is not None else {"V": spec.V}
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "key": np.array(spec.key),
        "shape": np.array(shape, dtype=np.int64),
        "S": np.asarray(spec.S, dtype=np.float64),
        "method": np.array(spec.method),
        "n_dropped": np.array(spec.n_dropped),
        **vectors,
    }
    arrays["checksum"] = np.array(entry_checksum(arrays))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: two threads may store the same key (equal layers).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{spec.key}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path, key: str, w0: torch.Tensor) -> BaseSpectrum:
    """Read and verify the entry of ``key`` for ``w0`` (n x m): besides the stored fields,
    sum(S^2) must equal ||W0||_F^2 (to :data:`FROBENIUS_RTOL` of the method), and the top
    :data:`VECTOR_CHECKS` stored vectors must be singular vectors of W0 with values S.

    Raises:
        BadEntry: the file does not read back whole, or any stored field disagrees with
            what an entry of this key and shape must hold (see the module docstring).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # any failure to read is a bad entry (zip, npy, EOF, memory)
        raise BadEntry(f"unreadable: {type(exc).__name__}: {exc}") from None
    n, m = w0.shape
    vector_name, side = ("U", n) if n <= m else ("V", m)
    common = {"format_version", "key", "shape", "S", "method", "n_dropped", "checksum"}
    if missing := sorted(common - arrays.keys()):
        raise BadEntry(f"fields missing: {', '.join(missing)}")
    if arrays["checksum"].shape != () or str(arrays["checksum"]) != entry_checksum(arrays):
        raise BadEntry("checksum does not match the stored arrays")
    S, n_dropped, method = arrays["S"], arrays["n_dropped"], str(arrays["method"])
    vectors = arrays.get(vector_name, np.empty(0, np.float32))
    w64 = w0.detach().to(torch.float64)  # once, for the two checks against W0
    checks = (
        (lambda: int(arrays["format_version"]) == FORMAT_VERSION, "another format version"),
        (lambda: str(arrays["key"]) == key, "stored under another key"),
        (lambda: arrays["shape"].tolist() == [n, m], f"not of a W0 of shape {[n, m]}"),
        (
            lambda: arrays.keys() == common | {vector_name},
            f"fields {sorted(arrays.keys() - common)}, not [{vector_name!r}]",
        ),
        (lambda: S.dtype == np.float64 and S.shape == (min(n, m),), f"S of shape {S.shape}"),
        (
            lambda: vectors.dtype == np.float32 and vectors.shape == (side, side),
            f"{vector_name} of shape {vectors.shape}, not {(side, side)}",
        ),
        (lambda: method in METHODS, f"unknown method {method!r}"),
        (lambda: np.isfinite(S).all() and np.isfinite(vectors).all(), "non-finite values"),
        (lambda: (S >= 0).all() and (np.diff(S) <= 0).all(), "S not non-negative, descending"),
        (lambda: int(n_dropped) == _dropped(S, n, m), "n_dropped does not match S"),
        (lambda: _frobenius_agrees(S, w64, method), "S does not match W0's Frobenius norm"),
        (
            lambda: _vectors_agree(S, vectors, w64, left=n <= m),
            f"{vector_name} does not hold singular vectors of W0",
        ),
    )
    for ok, why in checks:
        try:
            passed = bool(ok())
        except (TypeError, ValueError, IndexError):
            passed = False
        if not passed:
            raise BadEntry(why)
    return BaseSpectrum(
        key=key,
        S=S,
        U=vectors if n <= m else None,
        method=method,
        n_dropped=int(n_dropped),
        V=vectors if n > m else None,
    )


def _frobenius_agrees(S: np.ndarray, w0: torch.Tensor, method: str) -> bool:
    """sum(S^2) = ||W0||_F^2 within the method's accuracy (a check against W0 itself)."""
    frob_sq = float(torch.linalg.vector_norm(w0.to(torch.float64)) ** 2)
    return abs(float(np.sum(S**2)) - frob_sq) <= FROBENIUS_RTOL[method] * frob_sq


def _vectors_agree(S: np.ndarray, vectors: np.ndarray, w0: torch.Tensor, *, left: bool) -> bool:
    """The top stored vectors are orthonormal and ||W0^T u_i|| (left) or ||W0 v_i|| = S_i."""
    k = min(VECTOR_CHECKS, S.size)
    if k == 0:
        return True
    x = torch.from_numpy(vectors[:, :k]).to(torch.float64)
    w = w0.to(torch.float64)
    stretched = torch.linalg.vector_norm((w.T if left else w) @ x, dim=0).numpy()
    gram = (x.T @ x).numpy()
    scale = max(float(S[0]), 1e-300)
    return bool(
        np.abs(gram - np.eye(k)).max() <= VECTOR_RTOL
        and np.abs(stretched - S[:k]).max() <= VECTOR_RTOL * scale
    )


def _dropped(S: np.ndarray, n: int, m: int) -> int:
    """Left directions a tall W0 leaves out of products (see the module docstring)."""
    if n <= m or S.size == 0:
        return 0
    return int(S.size - (S > KEEP_RELATIVE * S[0]).sum())
