"""LoRA: dW = s B A with B = 0 and A Gaussian at init; s = alpha / r (alpha / sqrt(r) with rsLoRA)."""

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
