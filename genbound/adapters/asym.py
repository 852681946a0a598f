"""Asym-LoRA: A random and frozen, only B trains."""

from __future__ import annotations

from genbound.adapters.layers import AsymLayer
from genbound.adapters.registry import Variant, register

__all__ = ["VARIANT", "AsymLayer"]

VARIANT = register(
    Variant(
        name="asym",
        title="Asym-LoRA",
        structure="lowrank",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        in_paper_table=True,
        description="A random and frozen, only B trains.",
        trainable=True,
        layer=AsymLayer,
    )
)
