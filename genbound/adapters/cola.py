"""CoLA: Chain of LoRA: k links; after each, s B A merges into the weight and A, B restart."""

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
    )
)
