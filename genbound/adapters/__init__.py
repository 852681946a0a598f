"""Adapter variants: one module per method, all in one registry.

``genbound.adapters.apply(model, method, ...)`` wraps a model's layers in place and
returns an :class:`AdapterHandle` (trainable parameters, chain schedule, ``save``).
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
from genbound.adapters.handle import AdapterHandle
from genbound.adapters.registry import Variant, get_variant, register, variants
from genbound.adapters.wrap import apply

__all__ = ["AdapterHandle", "Variant", "apply", "get_variant", "register", "variants"]
