"""RAC: Like CoLA, but each link's A is a fresh frozen random matrix and only B trains."""

from __future__ import annotations

from torch import nn

from genbound.adapters.asym import AsymLayer
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


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator) -> AsymLayer:
    """An Asym layer; each chain step merges s B A and draws a fresh frozen A, B = 0."""
    return AsymLayer(base, rank=rank, scale=scale, generator=generator)
