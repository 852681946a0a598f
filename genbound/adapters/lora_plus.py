"""LoRA+: LoRA with a larger learning rate for B (ratio configurable)."""

from __future__ import annotations

from torch import nn

from genbound.adapters.lora import LoraLayer
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="lora_plus",
        title="LoRA+",
        structure="lowrank",
        trains=("A", "B"),
        count=lambda n, m, r, k: r * (m + n),
        in_paper_table=True,
        description="LoRA with a larger learning rate for B (ratio configurable).",
    )
)

#: Default ratio lr_B / lr_A (the LoRA+ paper's recommendation for most tasks).
DEFAULT_LR_RATIO = 16.0


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator) -> LoraLayer:
    """LoRA+ layers are LoRA layers; only the optimizer differs (B's rate times the ratio)."""
    return LoraLayer(base, rank=rank, scale=scale, generator=generator)
