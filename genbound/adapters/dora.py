"""DoRA: Weight-decomposed LoRA: W = m (W0 + s B A) / ||W0 + s B A|| (per-output norms).

genbound does not train DoRA (``apply`` refuses it); it reads PEFT's DoRA adapters and
rebuilds them as :class:`DoraLayer` for curvature and landscapes in their own coordinates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genbound.adapters.layers import AdapterLayer, linear_shape
from genbound.adapters.registry import Variant, register, register_layer
from genbound.adapters.tangent import FactorTangent, NoTangent, Tangent, basis

VARIANT = register(
    Variant(
        name="dora",
        title="DoRA",
        structure="dora",
        trains=("A", "B", "magnitude"),
        count=lambda n, m, r, k: r * (m + n) + n,
        description="Weight-decomposed LoRA: W = m (W0 + s B A) / ||W0 + s B A|| (per-output norms).",
    )
)


@register_layer
class DoraLayer(AdapterLayer):
    """A Linear/Conv1D whose weight is DoRA's W = diag(magnitude / ||V||) V, V = W0 + s B A.

    As PEFT defines it (``peft.tuners.lora.dora``): the norm is that of each output's row
    of V (n x m, math orientation), and the magnitude (n,) is PEFT's
    ``lora_magnitude_vector``. ``y = x W^T + bias``.

    PEFT's forward detaches ||V|| (a memory saving the DoRA paper proposes for training),
    so its gradients with respect to B and A are not those of the function it computes.
    Here the norm is differentiated: gradients and Hessians are those of the model's loss
    as a function of the trained coordinates (magnitude, B, A); function values are the same.

    Args:
        base: the wrapped layer holding W0 (frozen).
        B: (n x r), A: (r x m), magnitude: (n,) initial values (copied, in W0's dtype).
        scale: s.
    """

    kind = "dora"
    trained = ("A", "B", "magnitude")
    #: W is not W0 + dW for a dW independent of W0: moving W0 moves V and its norms.
    additive = False

    def __init__(
        self,
        base: nn.Module,
        *,
        B: torch.Tensor,
        A: torch.Tensor,
        magnitude: torch.Tensor,
        scale: float,
    ):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.n, self.m, self.transposed = linear_shape(base)
        w = base.weight
        self.scale = float(scale)
        self.B = nn.Parameter(B.detach().to(w.dtype).clone())
        self.A = nn.Parameter(A.detach().to(w.dtype).clone())
        self.magnitude = nn.Parameter(magnitude.detach().reshape(-1).to(w.dtype).clone())
        self.rank = int(self.B.shape[1])

    def base_weight(self) -> torch.Tensor:
        """W0 (n x m), math orientation."""
        w = self.base.weight
        return w.T if self.transposed else w

    def direction(self) -> torch.Tensor:
        """V = W0 + s B A (n x m)."""
        return self.base_weight() + self.scale * (self.B @ self.A)

    def weight(self) -> torch.Tensor:
        """W = diag(magnitude / ||V||) V (n x m), differentiable in (magnitude, B, A)."""
        v = self.direction()
        return (self.magnitude / torch.linalg.vector_norm(v, dim=1))[:, None] * v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.base.bias)

    @torch.no_grad()
    def link_delta(self) -> torch.Tensor:
        """dW = W - W0 (n x m, float64)."""
        return self.weight().double() - self.base_weight().double()

    @classmethod
    @torch.no_grad()
    def from_update(cls, base: nn.Module, update: Any) -> DoraLayer:
        """``update`` is a DoRA update: its low-rank part gives B, A and s."""
        w = base.weight
        low = update.lowrank
        layer = cls(base, B=low.B, A=low.A, magnitude=update.magnitude, scale=low.scale)
        layer.trained = (*low.trained, "magnitude")
        return layer.to(w.device)

    @torch.no_grad()
    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        """W = diag(g) V, g = magnitude / ||V|| (row norms), V = W0 + s B A, moves along
        diag(g) {s (dB A + B dA)} plus, for each output i, the row direction
        e_i v_i^T / ||v_i|| of its magnitude (the part of dV along v_i is a magnitude change
        too). The space is {Qb Y + Z Qa^T} (Qb: basis of col(diag(g) B), Qa: of row(A))
        plus the magnitude directions' parts outside it, (I - Qb Qb^T) e_i u_i^T with u_i
        the unit row v_i / ||v_i|| minus its part in row(A), orthonormalised through their
        (n x n) Gram matrix (eigenvalues below max(n, m) eps of the largest dropped). Known
        only with the magnitude selected; a magnitude of exactly zero makes its row's B and
        A directions unreachable, which this space does not model."""
        if "magnitude" not in trained:
            raise NoTangent("DoRA layer without its magnitude selected, skipped")
        v = self.direction().detach().double()
        norms = torch.linalg.vector_norm(v, dim=1)
        gain = self.magnitude.detach().double() / norms
        qb = basis(gain[:, None] * self.B.detach().double()) if "A" in trained else None
        qa = basis(self.A.detach().double().T) if "B" in trained else None
        u = v / norms[:, None]
        if qa is not None:
            u = u - (u @ qa) @ qa.T
        gram = u @ u.T  # Gram matrix of (I - Qb Qb^T) e_i u_i^T: (I - Qb Qb^T) times U U^T
        if qb is not None:
            gram = gram * (torch.eye(len(gram), dtype=torch.float64) - qb @ qb.T)
        lam, vecs = torch.linalg.eigh(gram)
        eps = torch.finfo(self.B.dtype).eps
        keep = lam > lam.max().clamp_min(0) * max(v.shape) * eps
        mat = vecs[:, keep] / lam[keep].sqrt()
        rows = (u, mat) if bool(keep.any()) else None
        return FactorTangent(int(v.shape[0]), int(v.shape[1]), qb, qa, rows)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, r={self.rank}, scale={self.scale:g}"
