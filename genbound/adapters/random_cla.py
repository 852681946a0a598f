"""random-cLA: cLA with r input columns drawn from the run's seed."""

from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="random_cla",
        title="random-cLA",
        structure="selector",
        trains=("B",),
        count=lambda n, m, r, k: r * n,
        random_selection=True,
        description="cLA with r input columns drawn from the run's seed.",
    )
)
