"""DoRA: Weight-decomposed LoRA: W = m (W0 + s B A) / ||W0 + s B A|| (per-output norms)."""

from __future__ import annotations

import torch
from torch import nn

from genbound.adapters.layers import linear_shape
from genbound.adapters.registry import Variant, register

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


class DoraLayer(nn.Module):
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

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, r={self.rank}, scale={self.scale:g}"
