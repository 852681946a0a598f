"""RAC: Like CoLA, but each link's A is a fresh frozen random matrix and only B trains.

Its layers are Asym layers; each chain step merges s B A and draws a fresh frozen A, B = 0.
"""

from __future__ import annotations

from genbound.adapters.layers import AsymLayer
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
        trainable=True,
        layer=AsymLayer,
    )
)
