"""LoRA: dW = s B A with B = 0 and A Gaussian at init; s = alpha / r (alpha / sqrt(r) with rsLoRA)."""

from __future__ import annotations

from genbound.adapters.layers import LoraLayer
from genbound.adapters.registry import Variant, register

__all__ = ["VARIANT", "LoraLayer"]

VARIANT = register(
    Variant(
        name="lora",
        title="LoRA",
        structure="lowrank",
        trains=("A", "B"),
        count=lambda n, m, r, k: r * (m + n),
        in_paper_table=True,
        description="dW = s B A with B = 0 and A Gaussian at init; s = alpha / r (alpha / sqrt(r) with rsLoRA).",
        trainable=True,
        layer=LoraLayer,
    )
)
