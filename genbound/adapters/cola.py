"""CoLA: Chain of LoRA: k links; after each, s B A merges into the weight and A, B restart.

Its layers are LoRA layers; each chain step merges s B A into W and redraws A, zeroes B.
"""

from __future__ import annotations

from genbound.adapters.layers import LoraLayer
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="cola",
        title="CoLA",
        structure="lowrank",
        trains=("A", "B"),
        count=lambda n, m, r, k: min(k * r * (m + n), m * n),
        chained=True,
        in_paper_table=True,
        description="Chain of LoRA: k links; after each, s B A merges into the weight and A, B restart.",
        trainable=True,
        layer=LoraLayer,
    )
)
