"""Adapter variants: one module per method, all in one registry.

``genbound.adapters.apply(model, method, ...)`` wraps a model's layers in place and
returns an :class:`AdapterHandle` (trainable parameters, chain schedule, ``save``).
``genbound.adapters.variants()`` lists them; ``get_variant(name)`` returns one with
its structure and trainable-parameter count per adapted layer.

Importing this package imports only the registry: ``apply`` and ``AdapterHandle`` (the
training side) are imported when first used, and the method modules when a variant is
first asked for, so that reading a checkpoint imports no training code.
"""

from __future__ import annotations

import importlib
from typing import Any

from genbound.adapters.registry import Variant, get_variant, register, variants

__all__ = ["AdapterHandle", "Variant", "apply", "get_variant", "register", "variants"]

#: Names imported on first use: name -> module that defines it.
_LAZY = {"AdapterHandle": "genbound.adapters.handle", "apply": "genbound.adapters.wrap"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
