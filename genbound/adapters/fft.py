"""Full FT: Full fine-tuning: every weight trains."""

from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="fft",
        title="Full FT",
        structure="dense",
        trains=("W",),
        count=lambda n, m, r, k: n * m,
        description="Full fine-tuning: every weight trains.",
        trainable=True,
    )
)
