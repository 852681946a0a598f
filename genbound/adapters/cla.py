"""cLA: A = [I_r | 0] fixed (a gather of the first r input columns); only B trains."""

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
