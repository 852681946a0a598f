"""random-c3LA: c3LA with the windows in a random order drawn from the run's seed."""

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
