"""Asym-LoRA: A random and frozen, only B trains."""

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
