"""Thin SVDs of weight updates, computed in factor space where factors exist.

All functions take and return float64 and order singular values descending.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

#: Factor problems up to this many scalars run on one thread: waking a thread pool costs
#: more than the work (a 384 x 16 QR takes about 20 microseconds on one core).
SMALL_PROBLEM = 1 << 18


@contextlib.contextmanager
def one_thread_if_small(*tensors: torch.Tensor) -> Iterator[None]:
    """Run the block on one torch thread when the tensors hold few scalars; restore after."""
    if sum(t.numel() for t in tensors) > SMALL_PROBLEM or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ThinSVD:
    """X = U diag(S) V^T with U (n x r), S (r,), V (m x r), float64, S descending."""

    U: torch.Tensor
    S: np.ndarray
    V: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])


def dense_svdvals(x: torch.Tensor) -> np.ndarray:
    """Singular values of a dense matrix; a wide matrix is transposed to tall first."""
    a = x.detach().to(torch.float64)
    if a.numel() == 0:
        return np.zeros(0)
    if a.shape[0] < a.shape[1]:
        a = a.T
    return torch.linalg.svdvals(a).numpy()


def dense_svd(x: torch.Tensor, k: int | None = None) -> ThinSVD:
    """Thin SVD of a dense matrix (optionally truncated to the top k)."""
    a = x.detach().to(torch.float64)
    wide = a.shape[0] < a.shape[1]
    u, s, vh = torch.linalg.svd(a.T if wide else a, full_matrices=False)
    v = vh.T
    if wide:
        u, v = v, u
    k = s.shape[0] if k is None else min(k, s.shape[0])
    return ThinSVD(U=u[:, :k], S=s[:k].numpy(), V=v[:, :k])


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> ThinSVD:
    """SVD of ``scale * B @ A`` (B: n x r, A: r x m) from the QR factors of B and A^T.

    B = Q_B R_B and A^T = Q_A R_A give scale * B A = Q_B (scale R_B R_A^T) Q_A^T: the
    SVD of the small core (at most r x r) finishes the job in O((n + m) r^2).
    """
    with one_thread_if_small(B, A):
        qb, rb = torch.linalg.qr(B.detach().to(torch.float64))
        qa, ra = torch.linalg.qr(A.detach().to(torch.float64).T)
        cu, cs, cvh = torch.linalg.svd(abs(scale) * (rb @ ra.T), full_matrices=False)
        u, v = qb @ cu, qa @ cvh.T
    sign = -1.0 if scale < 0 else 1.0
    k = min(B.shape[0], A.shape[1], B.shape[1])
    return ThinSVD(U=u[:, :k], S=cs[:k].numpy(), V=sign * v[:, :k])


def lowrank_svdvals(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """Singular values of ``scale * B @ A`` by the QR route (see :func:`lowrank_svd`)."""
    with one_thread_if_small(B, A):
        rb = torch.linalg.qr(B.detach().to(torch.float64), mode="r")[1]
        ra = torch.linalg.qr(A.detach().to(torch.float64).T, mode="r")[1]
        s = torch.linalg.svdvals(rb @ ra.T).numpy() * abs(float(scale))
    return s[: min(B.shape[0], A.shape[1], B.shape[1])]


def coalesce_columns(B: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the columns of B (n x r) that select the same input column.

    Returns (C, cols): C (n x u) float64 with one column per distinct index in ``cols``
    (u,), so that B E^T = C E_cols^T with orthonormal selector rows.
    """
    cols, inverse = torch.unique(indices, return_inverse=True)
    out = torch.zeros(B.shape[0], cols.numel(), dtype=torch.float64)
    out.index_add_(1, inverse, B.detach().to(torch.float64))
    return out, cols


def selector_svd(B: torch.Tensor, indices: torch.Tensor, m: int, scale: float = 1.0) -> ThinSVD:
    """SVD of dW with dW[:, indices] += scale * B (all other columns zero), dW n x m.

    The selected columns are orthonormal directions of the input space, so the SVD of
    the coalesced n x u block is the SVD of dW, with V scattered back into R^m.
    """
    c, cols = coalesce_columns(B, indices)
    block = dense_svd(scale * c)
    v = torch.zeros(m, block.rank, dtype=torch.float64)
    v[cols] = block.V
    return ThinSVD(U=block.U, S=block.S, V=v)
