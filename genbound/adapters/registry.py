"""The one registry of adapter variants.

Each method module (``genbound/adapters/<name>.py``) declares a :class:`Variant`:
its structure (how dW is parameterised and stored), which factors train, and its
trainable-parameter count per adapted layer. Training (``genbound.adapters``),
loading (``genbound.checkpoint``) and the bounds (``genbound.bounds``) all read
the count from here, so it is defined once.

Counts are the trainable scalars per adapted layer, for a layer with n outputs and m
inputs (weight n x m), adapter rank r and chain length k: e.g. r (m + n) for LoRA, r n
when only B trains, min(k r (m + n), m n) for CoLA (merged links are stored in full);
each variant module states its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from genbound.errors import GenboundError

#: How a variant's update is stored; one of these per variant.
STRUCTURES = ("dense", "lowrank", "selector", "columns", "dora", "vera", "none")


@dataclass(frozen=True)
class Variant:
    """One fine-tuning method.

    Attributes:
        name: registry key, e.g. ``"cla"``.
        title: the name used in papers, e.g. ``"cLA"``.
        structure: how one link of dW is stored (see :data:`STRUCTURES`).
        trains: factors that receive gradients, e.g. ``("A", "B")`` or ``("B",)``.
        chained: True when training merges k links into the weight (CoLA, RAC, c3LA).
        random_selection: True when the selected columns or window order come from
            the run's seed.
        count: ``count(n, m, r, k) -> int``, trainable scalars of one adapted n x m
            weight (the head and other fully trained tensors are counted separately,
            from their tensors).
        in_paper_table: True when the source paper's bound table lists the method.
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

    def trainable_per_layer(self, n: int, m: int, r: int | None = None, k: int = 1) -> int:
        """Trainable scalars of one adapted weight with n outputs and m inputs."""
        if n <= 0 or m <= 0:
            raise ValueError(f"layer shape must be positive, got n={n}, m={m}")
        if self.structure not in ("dense", "none", "vera") and r is None:
            raise ValueError(f"variant {self.name!r} needs a rank r")
        if k < 1:
            raise ValueError(f"chain length k must be >= 1, got {k}")
        return int(self.count(int(n), int(m), int(r or 0), int(k)))


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant to the registry (each method module calls this once)."""
    if variant.structure not in STRUCTURES:
        raise ValueError(f"unknown structure {variant.structure!r} for {variant.name!r}")
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is registered twice")
    _REGISTRY[variant.name] = variant
    return variant


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


def _load_all() -> None:
    # Importing the package imports every method module, which registers it.
    import genbound.adapters  # noqa: F401
