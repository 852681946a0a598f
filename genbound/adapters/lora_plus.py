"""LoRA+: LoRA with a larger learning rate for B (ratio configurable)."""

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
