"""PaCA: Partial Connection Adaptation: r columns of the weight itself train."""

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
