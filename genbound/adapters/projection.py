"""Seeded structured random projections P: R^d -> R^D for subspace training.

``kron`` (the only kind so far) is the Kronecker product of k small Gaussian factors with
orthonormal columns, as in the SubLoRA / intrinsic-dimension code (Lotfi et al. 2022,
2024), truncated to its first D rows and d columns, columns rescaled to unit norm:

    K = Q_1 (x) Q_2 (x) ... (x) Q_k,   Q_i (r_i x c_i), Q_i^T Q_i = I,
    P = K[:D, :d] diag(1 / ||K[:D, j]||),     prod r_i >= D,  prod c_i >= d.

Why this kind: memory is sum r_i c_i (a few hundred numbers) plus one length-D buffer
of the column norms' inputs, never D x d; ``P z`` and ``P^T g`` are k mode products
costing about D (c_1 + ... + c_k) <= D * 8 k flops with k = O(log d) (so O(D log d));
and every entry of the factors is a pure function of (seed, D, d): the Gaussian draws
come from ``torch.Generator().manual_seed(seed)`` on the CPU in float64 and the
orthonormalisation is a Gram-Schmidt in Python floats with ``math.fsum`` (correctly
rounded sums), so the factors are bit-identical on every machine.

Normalisation: every column of P has unit Euclidean norm (exactly, up to float64
rounding). A Kronecker product of matrices with orthonormal columns has orthonormal
columns, and keeping the first d columns keeps that; dropping the last prod r_i - D rows
shortens the columns, hence the rescaling. The columns are exactly orthonormal when
D = prod r_i, and nearly so otherwise (the dropped rows are a small fraction of K's).
So ||P z|| ~= ||z|| and gradient steps on z are gradient steps on theta projected on the
subspace, at the same scale.
"""

from __future__ import annotations

import math
from functools import reduce

import torch

from genbound.errors import GenboundError

#: Projection kinds :func:`make_projection` builds.
KINDS = ("kron",)

#: The largest number of columns a Kronecker factor gets (the cost per row of P z).
MAX_FACTOR_COLS = 8
#: The number of rows a Kronecker factor gets at most (unless it needs more columns).
MAX_FACTOR_ROWS = 64


def factor_shapes(D: int, d: int) -> list[tuple[int, int]]:
    """(r_i, c_i) of the Kronecker factors for a D x d projection.

    k = max(1, ceil(log_8 d), ceil(log_64 D)) factors (at most 8 columns and about 64
    rows each); the c_i are as equal as possible with prod c_i >= d, the r_i as equal as
    possible with prod r_i >= D, and r_i >= c_i (rows grown when D is barely above d).
    """
    k = max(1, _ceil_log(d, MAX_FACTOR_COLS), _ceil_log(D, MAX_FACTOR_ROWS))
    cols = _split(d, k)
    rows = [max(r, c) for r, c in zip(_split(D, k), cols, strict=True)]
    return list(zip(rows, cols, strict=True))


def _ceil_log(n: int, base: int) -> int:
    """The smallest k >= 0 with base**k >= n."""
    k = 0
    while base**k < n:
        k += 1
    return k


def _split(n: int, k: int) -> list[int]:
    """k integers as equal as possible whose product is >= n: each is the smallest f
    with f**(factors left) >= (what is left to cover)."""
    out: list[int] = []
    left = n
    for i in range(k):
        e = k - i
        f = max(1, round(left ** (1.0 / e)))
        while f**e < left:
            f += 1
        while f > 1 and (f - 1) ** e >= left:
            f -= 1
        out.append(f)
        left = -(-left // f)
    return out


def _orthonormal(g: list[list[float]], name: str) -> list[list[float]]:
    """Columns of g (r rows x c columns, lists of rows) orthonormalised by modified
    Gram-Schmidt, twice (re-orthogonalisation), with correctly rounded sums."""
    r, c = len(g), len(g[0])
    cols = [[g[i][j] for i in range(r)] for j in range(c)]
    for j in range(c):
        v = cols[j]
        for _ in range(2):
            for q in cols[:j]:
                dot = math.fsum(a * b for a, b in zip(q, v, strict=True))
                v = [a - dot * b for a, b in zip(v, q, strict=True)]
        norm = math.sqrt(math.fsum(a * a for a in v))
        if not norm > 1e-8:  # pragma: no cover - probability zero for Gaussian draws
            raise GenboundError(f"projection: factor {name} is rank deficient; change the seed.")
        cols[j] = [a / norm for a in v]
    return [[cols[j][i] for j in range(c)] for i in range(r)]


class KronProjection:
    """P (D x d) = K[:D, :d] diag(1 / norms), K a Kronecker product (module docstring).

    Args:
        D: rows (the number of trained scalars theta).
        d: columns (the subspace dimension, len(z)).
        seed: the Gaussian draws' seed.

    Attributes:
        factors: the Q_i, (r_i x c_i) float64 with orthonormal columns.
        norms: (d,) float64, the norms of K's truncated columns (P's columns are K's
            divided by them, hence of unit norm).
    """

    kind = "kron"

    def __init__(self, D: int, d: int, seed: int):
        _check_dims(D, d)
        self.D, self.d, self.seed = int(D), int(d), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.factors = []
        for i, (r, c) in enumerate(factor_shapes(self.D, self.d)):
            g = torch.randn(r, c, generator=gen, dtype=torch.float64).tolist()
            q = _orthonormal(g, f"{i} ({r} x {c})")
            self.factors.append(torch.tensor(q, dtype=torch.float64))
        self.rows = [int(q.shape[0]) for q in self.factors]
        self.cols = [int(q.shape[1]) for q in self.factors]
        squares = [q * q for q in self.factors]
        ones = torch.zeros(math.prod(self.rows), dtype=torch.float64)
        ones[: self.D] = 1.0
        self.norms = _modes(squares, ones, self.rows, transpose=True)[: self.d].sqrt()

    def to(self, device: torch.device | str) -> KronProjection:
        """Move the factors and norms to ``device`` (in place); returns self."""
        self.factors = [q.to(device) for q in self.factors]
        self.norms = self.norms.to(device)
        return self

    def matvec(self, z: torch.Tensor) -> torch.Tensor:
        """P z: (d,) -> (D,), float64, differentiable in z."""
        x = torch.zeros(math.prod(self.cols), dtype=torch.float64, device=z.device)
        x = torch.cat([z.double() / self.norms, x[self.d :]])
        return _modes(self.factors, x, self.cols, transpose=False)[: self.D]

    def rmatvec(self, g: torch.Tensor) -> torch.Tensor:
        """P^T g: (D,) -> (d,), float64."""
        pad = torch.zeros(math.prod(self.rows) - self.D, dtype=torch.float64, device=g.device)
        x = torch.cat([g.double(), pad])
        return _modes(self.factors, x, self.rows, transpose=True)[: self.d] / self.norms

    def dense(self) -> torch.Tensor:
        """P as a dense (D x d) float64 matrix (for tests on small sizes only)."""
        k = reduce(torch.kron, self.factors)
        return k[: self.D, : self.d] / self.norms


def _modes(factors: list[torch.Tensor], x: torch.Tensor, dims: list[int], transpose: bool):
    """(F_1 (x) ... (x) F_k) x, or its transpose, for a flat x of prod(dims) entries
    (row-major: the first factor's index varies slowest)."""
    t = x.reshape(dims)
    for i, f in enumerate(factors):
        f = f.T if transpose else f
        # contract axis i of t with f's columns; the new axis goes back to position i
        t = torch.movedim(torch.tensordot(f, t, dims=([1], [i])), 0, i)
    return t.reshape(-1)


def _check_dims(D: int, d: int) -> None:
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise GenboundError(f"subspace: expected d, a positive integer; found {d!r}.")
    if d > D:
        raise GenboundError(
            f"subspace: d = {d} is larger than the number of trained scalars D = {D}; "
            f"expected 1 <= d <= {D}."
        )


def make_projection(kind: str, D: int, d: int, seed: int) -> KronProjection:
    """The projection of ``kind`` (see :data:`KINDS`) from R^d to R^D, drawn from ``seed``."""
    if kind != "kron":
        raise GenboundError(
            f"subspace: unknown projection kind {kind!r}; expected one of {', '.join(KINDS)}."
        )
    return KronProjection(D, d, seed)
