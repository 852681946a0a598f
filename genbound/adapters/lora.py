"""LoRA: dW = s B A with B = 0 and A Gaussian at init; s = alpha / r (alpha / sqrt(r) with rsLoRA)."""

from __future__ import annotations

from torch import nn

from genbound.adapters.layers import LowRankLayer
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="lora",
        title="LoRA",
        structure="lowrank",
        trains=("A", "B"),
        count=lambda n, m, r, k: r * (m + n),
        in_paper_table=True,
        description="dW = s B A with B = 0 and A Gaussian at init; s = alpha / r (alpha / sqrt(r) with rsLoRA).",
    )
)


class LoraLayer(LowRankLayer):
    """LoRA: B (n x r) = 0 and A (r x m) ~ N(0, 1/m) at init; both train."""

    trained = ("A", "B")
    train_A = True


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator) -> LoraLayer:
    """Wrap one Linear/Conv1D (``chain`` is 1 for this unchained method)."""
    return LoraLayer(base, rank=rank, scale=scale, generator=generator)
