"""VeRA: Vector-based random adaptation: frozen shared random A, B; trained scaling vectors d (r) and b (n)."""

from genbound.adapters.registry import Variant, register

VARIANT = register(
    Variant(
        name="vera",
        title="VeRA",
        structure="vera",
        trains=("b", "d"),
        count=lambda n, m, r, k: n + r,
        description="Vector-based random adaptation: frozen shared random A, B; trained scaling vectors d (r) and b (n).",
    )
)
