"""LoRA+: LoRA with a larger learning rate for B (ratio configurable).

LoRA+ layers are LoRA layers; only the optimizer differs (B's rate times the ratio, see
``AdapterHandle.param_groups``).
"""

from __future__ import annotations

from genbound.adapters.layers import LoraLayer
from genbound.adapters.registry import Variant, register

#: Default ratio lr_B / lr_A (the LoRA+ paper's recommendation for most tasks).
DEFAULT_LR_RATIO = 16.0

VARIANT = register(
    Variant(
        name="lora_plus",
        title="LoRA+",
        structure="lowrank",
        trains=("A", "B"),
        count=lambda n, m, r, k: r * (m + n),
        in_paper_table=True,
        description="LoRA with a larger learning rate for B (ratio configurable).",
        trainable=True,
        layer=LoraLayer,
        lr_ratio=DEFAULT_LR_RATIO,
    )
)
