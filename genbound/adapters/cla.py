"""cLA: A = [I_r | 0] fixed (a gather of the first r input columns); only B trains."""

from __future__ import annotations

import torch
from torch import nn

from genbound.adapters.layers import SelectorLayer, base_inputs
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="cla",
        title="cLA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        in_paper_table=True,
        description="A = [I_r | 0] fixed (a gather of the first r input columns); only B trains.",
    )
)


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The first r input columns: A = [I_r | 0]."""
    return [torch.arange(r, dtype=torch.int64)]


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator):
    """Wrap one Linear/Conv1D with a gather of the first r input columns."""
    return SelectorLayer(
        base, rank=rank, scale=scale, plan=plan(base_inputs(base), rank, chain, generator)
    )
