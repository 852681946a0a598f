"""random-cLA: cLA with r input columns drawn from the run's seed."""

from __future__ import annotations

import torch

from genbound.adapters.layers import SelectorLayer
from genbound.adapters.registry import Variant, register


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """r distinct input columns drawn from the run's generator (sorted)."""
    return [torch.randperm(m, generator=generator)[:r].sort().values]


VARIANT = register(
    Variant(
        name="random_cla",
        title="random-cLA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        random_selection=True,
        description="cLA with r input columns drawn from the run's seed.",
        trainable=True,
        layer=SelectorLayer,
        plan=plan,
    )
)
