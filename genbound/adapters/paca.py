"""PaCA: Partial Connection Adaptation: r columns of the weight itself train."""

from __future__ import annotations

import torch

from genbound.adapters.layers import SelectorLayer
from genbound.adapters.registry import Variant, register


def plan(m: int, r: int, chain: int, generator: torch.Generator) -> list[torch.Tensor]:
    """r distinct input columns drawn from the run's generator (sorted)."""
    return [torch.randperm(m, generator=generator)[:r].sort().values]


class PacaLayer(SelectorLayer):
    """PaCA: W[:, idx] + D trains directly; D (n x r) = 0 at init, scale fixed to 1.

    Implemented as a trainable delta on r columns: ``y = W0 x + b + x[..., idx] @ D.T``,
    saved as a selector link with scale 1 (D is stored as B).
    """

    @classmethod
    def for_variant(cls, base, *, variant, rank, scale, chain, generator) -> PacaLayer:
        """``scale`` is ignored (always 1: the columns themselves train)."""
        return super().for_variant(
            base, variant=variant, rank=rank, scale=1.0, chain=chain, generator=generator
        )


VARIANT = register(
    Variant(
        name="paca",
        title="PaCA",
        structure="columns",
        trains=("W",),
        count=lambda n, m, r, k: r * n,
        random_selection=True,
        in_paper_table=True,
        description="Partial Connection Adaptation: r columns of the weight itself train.",
        trainable=True,
        layer=PacaLayer,
        plan=plan,
    )
)
