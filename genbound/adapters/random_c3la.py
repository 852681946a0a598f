"""random-c3LA: c3LA with the windows in a random order drawn from the run's seed."""

from __future__ import annotations

import torch

from genbound.adapters.layers import SelectorLayer
from genbound.adapters.registry import Variant, register


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The k windows [w r, (w + 1) r), w drawn without replacement from the m // r windows."""
    order = torch.randperm(m // r, generator=generator)[:chain].tolist()
    return [torch.arange(w * r, (w + 1) * r, dtype=torch.int64) for w in order]


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
        trainable=True,
        layer=SelectorLayer,
        plan=plan,
    )
)
