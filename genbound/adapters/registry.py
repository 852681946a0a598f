"""The one registry of adapter variants and of the adapter layers that rebuild updates.

Each method module (``genbound/adapters/<name>.py``, listed in :data:`BUILTIN`) declares a
:class:`Variant`: its structure (how dW is parameterised and stored), which factors train,
its trainable-parameter count per adapted layer and, when :func:`genbound.adapters.apply`
can train it, the adapter layer class it wraps layers with. Training
(``genbound.adapters``), loading (``genbound.checkpoint``) and the bounds
(``genbound.bounds``) all read the count from here, so it is defined once.

Adapter layer classes register under the update kind they save and rebuild
(:func:`register_layer`, :func:`layer_for`): ``"lowrank"``, ``"selector"``, ``"dora"``,
``"vera"``. What a layer and an update kind must provide is stated in
:mod:`genbound.adapters.layers` and :mod:`genbound.checkpoint.updates`.

Counts are the trainable scalars per adapted layer, for a layer with n outputs and m
inputs (weight n x m), adapter rank r and chain length k: e.g. r (m + n) for LoRA, r n
when only B trains, min(k r (m + n), m n) for CoLA (merged links are stored in full);
each variant module states its own.

This module imports no method module until a variant or a layer is asked for, so that
``genbound.checkpoint`` can import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genbound.errors import GenboundError

#: How a variant's update is stored; one of these per variant.
STRUCTURES = ("dense", "lowrank", "selector", "columns", "dora", "vera", "none")

#: The built-in method modules; importing one registers its variant (and its layers).
BUILTIN = (
    "genbound.adapters.asym",
    "genbound.adapters.c3la",
    "genbound.adapters.cla",
    "genbound.adapters.cola",
    "genbound.adapters.dora",
    "genbound.adapters.fft",
    "genbound.adapters.head",
    "genbound.adapters.lora",
    "genbound.adapters.lora_plus",
    "genbound.adapters.paca",
    "genbound.adapters.rac",
    "genbound.adapters.random_c3la",
    "genbound.adapters.random_cla",
    "genbound.adapters.vera",
)


@dataclass(frozen=True)
class Variant:
    """One fine-tuning method.

    Attributes:
        name: registry key, e.g. ``"cla"``.
        title: the name used in papers, e.g. ``"cLA"``.
        structure: how one link of dW is stored (see :data:`STRUCTURES`).
        trains: factors that receive gradients, e.g. ``("A", "B")`` or ``("B",)``.
        count: ``count(n, m, r, k) -> int``, trainable scalars of one adapted n x m
            weight (the head and other fully trained tensors are counted separately,
            from their tensors).
        chained: True when training merges k links into the weight (CoLA, RAC, c3LA).
        random_selection: True when the selected columns or window order come from
            the run's seed.
        in_paper_table: True when the source paper's bound table lists the method.
        description: one sentence on dW.
        trainable: True when :func:`genbound.adapters.apply` can train the method.
        layer: the adapter layer class ``apply`` wraps each target layer in (None when no
            layer is adapted: full fine-tuning, head only, or a method apply cannot train).
            Its ``build`` makes the layers of a run (see
            :class:`genbound.adapters.layers.AdaptedLayer`).
        plan: for selector methods, ``plan(m, r, k, generator) -> [indices of link j]``,
            the (r,) int64 input columns each link selects.
        lr_ratio: the default ratio lr_B / lr of a method whose B trains faster (LoRA+);
            None for the others.
    """

    name: str
    title: str
    structure: str
    trains: tuple[str, ...]
    count: Callable[[int, int, int, int], int] = field(repr=False)
    chained: bool = False
    random_selection: bool = False
    in_paper_table: bool = False
    description: str = ""
    trainable: bool = False
    layer: type | None = field(default=None, repr=False)
    plan: Callable[..., list[Any]] | None = field(default=None, repr=False)
    lr_ratio: float | None = None

    @property
    def needs_rank(self) -> bool:
        """True when the count formula reads the adapter rank r."""
        return self.structure not in ("dense", "none")

    def trainable_per_layer(self, n: int, m: int, r: int | None = None, k: int = 1) -> int:
        """Trainable scalars of one adapted weight with n outputs and m inputs."""
        if n <= 0 or m <= 0:
            raise ValueError(f"layer shape must be positive, got n={n}, m={m}")
        if self.needs_rank and r is None:
            raise ValueError(f"variant {self.name!r} needs a rank r")
        if k < 1:
            raise ValueError(f"chain length k must be >= 1, got {k}")
        return int(self.count(int(n), int(m), int(r or 0), int(k)))


_REGISTRY: dict[str, Variant] = {}
_LAYERS: dict[str, type] = {}


def register(variant: Variant) -> Variant:
    """Add a variant to the registry (each method module calls this once)."""
    if variant.structure not in STRUCTURES:
        raise ValueError(f"unknown structure {variant.structure!r} for {variant.name!r}")
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is registered twice")
    _REGISTRY[variant.name] = variant
    return variant


def register_layer(cls: type) -> type:
    """Register an adapter layer class as the one that rebuilds updates of kind ``cls.kind``
    (usable as a class decorator)."""
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"layer class {cls.__name__} must name the update kind it rebuilds")
    if _LAYERS.get(kind, cls) is not cls:
        raise ValueError(f"update kind {kind!r} already has the layer {_LAYERS[kind].__name__}")
    _LAYERS[kind] = cls
    return cls


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; a clear error listing the known ones."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise GenboundError(
            f"unknown adapter variant {name!r}; expected one of: {known}."
        ) from None


def variants() -> dict[str, Variant]:
    """All registered variants, by name."""
    _load_all()
    return dict(_REGISTRY)


def layer_for(kind: str) -> type | None:
    """The adapter layer class that rebuilds updates of kind ``kind``, or None (dense
    updates and chains have none: a chain is rebuilt from its last link)."""
    _load_all()
    return _LAYERS.get(kind)


def _load_all() -> None:
    """Import every built-in method module (each registers itself once)."""
    for module in BUILTIN:
        importlib.import_module(module)
