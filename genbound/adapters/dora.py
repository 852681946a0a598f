"""DoRA: Weight-decomposed LoRA: W = m (W0 + s B A) / ||W0 + s B A|| (per-output norms)."""

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
