"""Adapter variants: one module per method, all in one registry.

``genbound.adapters.variants()`` lists them; ``get_variant(name)`` returns one with
its structure and trainable-parameter count per adapted layer.
"""

from genbound.adapters import (  # noqa: F401  (each import registers its variant)
    asym,
    c3la,
    cla,
    cola,
    dora,
    fft,
    head,
    lora,
    lora_plus,
    paca,
    rac,
    random_c3la,
    random_cla,
    vera,
)
from genbound.adapters.registry import Variant, get_variant, register, variants

__all__ = ["Variant", "get_variant", "register", "variants"]
