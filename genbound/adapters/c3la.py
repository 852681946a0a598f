"""c3LA: Chained cLA: link j selects columns [(j-1) r, j r); each finished link merges."""

from __future__ import annotations

import torch

from genbound.adapters.layers import SelectorLayer
from genbound.adapters.registry import Variant, register


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Link j (0-based) selects the window of columns [j r, (j + 1) r); needs k r <= m."""
    return [torch.arange(j * r, (j + 1) * r, dtype=torch.int64) for j in range(chain)]


VARIANT = register(
    Variant(
        name="c3la",
        title="c3LA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: n * min(k * r, m),
        chained=True,
        in_paper_table=True,
        description="Chained cLA: link j selects columns [(j-1) r, j r); each finished link merges.",
        trainable=True,
        layer=SelectorLayer,
        plan=plan,
    )
)
