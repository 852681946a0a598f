"""cLA: A = [I_r | 0] fixed (a gather of the first r input columns); only B trains."""

from __future__ import annotations

import torch

from genbound.adapters.layers import SelectorLayer
from genbound.adapters.registry import Variant, register


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The first r input columns: A = [I_r | 0]."""
    return [torch.arange(r, dtype=torch.int64)]


VARIANT = register(
    Variant(
        name="cla",
        title="cLA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        in_paper_table=True,
        description="A = [I_r | 0] fixed (a gather of the first r input columns); only B trains.",
        trainable=True,
        layer=SelectorLayer,
        plan=plan,
    )
)
