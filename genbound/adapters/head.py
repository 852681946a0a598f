"""Head only: Only the classification head trains; no layer is adapted."""

from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="head",
        title="Head only",
        structure="none",
        trains=(),
        count=lambda n, m, r, k: 0,
        description="Only the classification head trains; no layer is adapted.",
        trainable=True,
    )
)
