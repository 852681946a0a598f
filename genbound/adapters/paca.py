"""PaCA: Partial Connection Adaptation: r columns of the weight itself train."""

from __future__ import annotations

import torch
from torch import nn

from genbound.adapters.layers import SelectorLayer, base_inputs
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="paca",
        title="PaCA",
        structure="columns",
        trains=("W",),
        count=lambda n, m, r, k: r * n,
        in_paper_table=True,
        description="Partial Connection Adaptation: r columns of the weight itself train.",
    )
)


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """r distinct input columns drawn from the run's generator (sorted)."""
    return [torch.randperm(m, generator=generator)[:r].sort().values]


class PacaLayer(SelectorLayer):
    """PaCA: W[:, idx] + D trains directly; D (n x r) = 0 at init, scale fixed to 1.

    Implemented as a trainable delta on r columns: ``y = W0 x + b + x[..., idx] @ D.T``,
    saved as a selector link with scale 1 (D is stored as B).
    """


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator) -> PacaLayer:
    """Wrap one Linear/Conv1D; ``scale`` is ignored (always 1: the columns themselves train)."""
    return PacaLayer(
        base, rank=rank, scale=1.0, plan=plan(base_inputs(base), rank, chain, generator)
    )
