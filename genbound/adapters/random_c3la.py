"""random-c3LA: c3LA with the windows in a random order drawn from the run's seed."""

from __future__ import annotations

import torch
from torch import nn

from genbound.adapters.layers import SelectorLayer, base_inputs
from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="random_c3la",
        title="random-c3LA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: n * min(k * r, m),
        chained=True,
        random_selection=True,
        description="c3LA with the windows in a random order drawn from the run's seed.",
    )
)


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The k windows [w r, (w + 1) r), w drawn without replacement from the m // r windows."""
    order = torch.randperm(m // r, generator=generator)[:chain].tolist()
    return [torch.arange(w * r, (w + 1) * r, dtype=torch.int64) for w in order]


def make_layer(base: nn.Module, *, rank: int, scale: float, chain: int, generator):
    """Wrap one Linear/Conv1D; windows in a random order drawn from the run's seed."""
    return SelectorLayer(
        base, rank=rank, scale=scale, plan=plan(base_inputs(base), rank, chain, generator)
    )
