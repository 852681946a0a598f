"""Asym-LoRA: A random and frozen, only B trains."""

from __future__ import annotations

from torch import nn

from genbound.adapters.layers import LowRankLayer
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="asym",
        title="Asym-LoRA",
        structure="lowrank",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        in_paper_table=True,
        description="A random and frozen, only B trains.",
    )
)


class AsymLayer(LowRankLayer):
    """Asym-LoRA: A (r x m) ~ N(0, 1/m) is a frozen buffer; only B (n x r, zero at init) trains."""

    trained = ("B",)
    train_A = False


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator) -> AsymLayer:
    """Wrap one Linear/Conv1D (``chain`` is 1 for this unchained method)."""
    return AsymLayer(base, rank=rank, scale=scale, generator=generator)
