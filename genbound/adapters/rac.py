"""RAC: Like CoLA, but each link's A is a fresh frozen random matrix and only B trains."""

from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="rac",
        title="RAC",
        structure="lowrank",
        trains=("B",),
        count=lambda n, m, r, k: min(k * r * n, m * n),
        chained=True,
        in_paper_table=True,
        description="Like CoLA, but each link's A is a fresh frozen random matrix and only B trains.",
    )
)
