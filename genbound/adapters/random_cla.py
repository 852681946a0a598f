"""random-cLA: cLA with r input columns drawn from the run's seed."""

from __future__ import annotations

import torch
from torch import nn

from genbound.adapters.layers import SelectorLayer, base_inputs
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="random_cla",
        title="random-cLA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        random_selection=True,
        description="cLA with r input columns drawn from the run's seed.",
    )
)


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """r distinct input columns drawn from the run's generator (sorted)."""
    return [torch.randperm(m, generator=generator)[:r].sort().values]


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator):
    """Wrap one Linear/Conv1D with a gather of r random input columns."""
    return SelectorLayer(
        base, rank=rank, scale=scale, plan=plan(base_inputs(base), rank, chain, generator)
    )
