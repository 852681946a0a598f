"""c3LA: Chained cLA: link j selects columns [(j-1) r, j r); each finished link merges."""

from genbound.adapters.registry import Variant, register

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
    )
)
