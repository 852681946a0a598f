"""VeRA: Vector-based random adaptation (Kopiczko et al. 2024): dW = diag(b) B diag(d) A.

One pair of random matrices, A (r x m_max) and B (n_max x r) for the largest input and
output sizes among the adapted layers, is drawn from the run's seed and shared by every
layer, which uses the slices A[:, :m] and B[:n, :] (frozen). Each layer trains two
scaling vectors: b (n,), zero at init, and d (r,), 0.1 at init. As PEFT's ``VeraModel``
does: A and B are Kaiming-uniform draws (bound sqrt(6 / fan_in)) from
``torch.Generator().manual_seed(seed)``, A first, so that a run with seed s has the
projections of a PEFT VeRA adapter with ``projection_prng_key=s``. There is no scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from genbound.adapters.layers import AdaptedLayer, linear_shape
from genbound.adapters.registry import Variant, register, register_layer
from genbound.adapters.tangent import Added, Tangent

#: d's initial value (PEFT's ``d_initial``).
D_INITIAL = 0.1


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-sqrt(6 / shape[1]), sqrt(6 / shape[1])) draws (float32), as PEFT's VeRA draws
    its projections."""
    std = math.sqrt(2.0) / math.sqrt(shape[1])  # gain sqrt(2) over sqrt(fan_in)
    bound = math.sqrt(3.0) * std
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


@register_layer
class VeraLayer(AdaptedLayer):
    """y = W0 x + bias + b * (B (d * (A x))): A (r x m) and B (n x r) frozen buffers, b (n,)
    and d (r,) trained.

    Args:
        base: the wrapped Linear/Conv1D (frozen).
        A, B: this layer's slices of the shared projections (copied, in W0's dtype).
        b, d: initial scaling vectors; default b = 0 and d = :data:`D_INITIAL`.
    """

    kind = "vera"
    trained = ("b", "d")
    origin = "b"

    def __init__(
        self,
        base: nn.Module,
        *,
        A: torch.Tensor,
        B: torch.Tensor,
        b: torch.Tensor | None = None,
        d: torch.Tensor | None = None,
    ):
        super().__init__(base, rank=int(A.shape[0]), scale=1.0)
        w = base.weight
        like = dict(dtype=w.dtype, device=w.device)
        self.register_buffer("A", A.detach().to(**like).clone())
        self.register_buffer("B", B.detach().to(**like).clone())
        b0 = torch.zeros(self.n) if b is None else b.detach()
        d0 = torch.full((self.rank,), D_INITIAL) if d is None else d.detach()
        self.b = nn.Parameter(b0.reshape(-1).to(**like).clone())
        self.d = nn.Parameter(d0.reshape(-1).to(**like).clone())

    # -- building a run ------------------------------------------------------------
    @classmethod
    def build(
        cls,
        bases: Mapping[str, nn.Module],
        *,
        variant: Variant,
        rank: int,
        scale: float,
        chain: int,
        generator: torch.Generator,
    ) -> dict[str, VeraLayer]:
        """The layers of one run: the shared A (r x m_max) and B (n_max x r) drawn once,
        sliced for each layer; ``scale`` is not used (VeRA has none)."""
        shapes = [linear_shape(base)[:2] for base in bases.values()]
        a = kaiming_uniform((rank, max(m for _, m in shapes)), generator)
        b = kaiming_uniform((max(n for n, _ in shapes), rank), generator)
        return {
            name: cls(base, A=a[:, :m], B=b[:n, :])
            for (name, base), (n, m) in zip(bases.items(), shapes, strict=True)
        }

    @torch.no_grad()
    def start_link(self, link: int, generator: torch.Generator) -> list[nn.Parameter]:
        """b = 0 and d = :data:`D_INITIAL` again (the projections stay)."""
        self.b.zero_()
        self.d.fill_(D_INITIAL)
        return [self.b, self.d]

    # -- the update ----------------------------------------------------------------
    def update(self, x: torch.Tensor) -> torch.Tensor:
        return self.b * nn.functional.linear(self.d * nn.functional.linear(x, self.A), self.B)

    def link_tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().clone() for k in ("B", "A", "b", "d")}

    def link_fields(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def tensors_delta(t, scale, shape):
        b, d = t["b"].double(), t["d"].double()
        return (b[:, None] * t["B"].double() * d[None, :]) @ t["A"].double()

    @classmethod
    @torch.no_grad()
    def from_update(cls, base: nn.Module, update: Any) -> VeraLayer:
        w = base.weight
        layer = cls(base, A=update.A, B=update.B, b=update.b, d=update.d)
        layer.trained = tuple(f for f in ("b", "d") if f in update.trained)
        return layer.to(w.device)

    @torch.no_grad()
    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        return VeraTangent(self.A, self.B, self.b, self.d, trained)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, r={self.rank}"


class VeraTangent(Tangent):
    """T = {diag(x) B diag(d) A + diag(b) B diag(y) A}: x (n,) moves b, y (r,) moves d
    (only the trained ones).

    The map J: (x, y) -> that matrix is not orthonormal; its Gram matrix G = J^T J is
    [[diag(||M_i||^2), (M A^T) * Bb], [.., (Bb^T Bb) * (A A^T)]] with M = B diag(d) A and
    Bb = diag(b) B (``*`` entrywise). With G = V diag(lam) V^T, the coordinates c of
    J V_k diag(lam_k)^(-1/2) c (eigenvalues below max(n, m) eps of the largest dropped)
    are orthonormal.
    """

    def __init__(self, A, B, b, d, trained: tuple[str, ...]):
        a, bmat = A.detach().double(), B.detach().double()
        bv, dv = b.detach().double(), d.detach().double()
        self.n, self.m = int(bmat.shape[0]), int(a.shape[1])
        self.moves = ("b" in trained, "d" in trained)
        self.a = a
        self.rows = bmat * dv[None, :] @ a  # M = B diag(d) A: b_i moves row i along M_i
        self.bb = bv[:, None] * bmat  # Bb = diag(b) B: d_j moves along Bb_j A_j^T
        xx = torch.diag(self.rows.square().sum(1))  # <e_i M_i^T, e_k M_k^T>
        yy = (self.bb.T @ self.bb) * (a @ a.T)  # <Bb_j A_j^T, Bb_l A_l^T>
        xy = (self.rows @ a.T) * self.bb  # <e_i M_i^T, Bb_j A_j^T>
        if all(self.moves):
            gram = torch.cat([torch.cat([xx, xy], 1), torch.cat([xy.T, yy], 1)], 0)
        else:
            gram = xx if self.moves[0] else yy
        lam, vecs = torch.linalg.eigh(gram)
        eps = torch.finfo(B.dtype).eps
        keep = lam > lam.max().clamp_min(0) * max(self.n, self.m) * eps
        self.mat = vecs[:, keep] / lam[keep].sqrt()  # (K x k)

    @property
    def dimension(self) -> int:
        return int(self.mat.shape[1])

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.dimension,)]

    def _split(self, u: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(x, y) of u (... x K): the parts moving b and d (None when not trained)."""
        x = u[..., : self.n] if self.moves[0] else None
        y = u[..., -self.bb.shape[1] :] if self.moves[1] else None
        return x, y

    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = []
        if self.moves[0]:
            parts.append((x * self.rows).sum(-1))  # <X, e_i M_i^T>
        if self.moves[1]:
            parts.append(((self.bb.T @ x) * self.a).sum(-1))  # <X, Bb_j A_j^T>
        return [torch.cat(parts, -1) @ self.mat]

    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        xs, ys = self._split(parts[0] @ self.mat.T)
        out = torch.zeros(*parts[0].shape[:-1], self.n, self.m, dtype=torch.float64)
        if xs is not None:
            out = out + xs[..., None] * self.rows
        if ys is not None:
            out = out + (self.bb * ys[..., None, :]) @ self.a
        return out

    def bind(self, dtype: torch.dtype) -> Added:
        mat = self.mat.to(dtype)
        rows, a, bb = self.rows.to(dtype), self.a.to(dtype), self.bb.to(dtype)
        linear = nn.functional.linear

        def added(output: torch.Tensor, x: torch.Tensor, tensors: list[torch.Tensor]):
            xs, ys = self._split(mat @ tensors[0])
            if xs is not None:  # x (diag(xs) M)^T
                output = output + linear(x, rows) * xs
            if ys is not None:  # x (Bb diag(ys) A)^T
                output = output + linear(linear(x, a) * ys, bb)
            return output

        return added


VARIANT = register(
    Variant(
        name="vera",
        title="VeRA",
        structure="vera",
        trains=("b", "d"),
        count=lambda n, m, r, k: n + r,
        description="Vector-based random adaptation: frozen shared random A, B; trained scaling vectors d (r) and b (n).",
        trainable=True,
        layer=VeraLayer,
    )
)
