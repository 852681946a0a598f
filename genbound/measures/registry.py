"""The one registry of measures: the report, the sweep and the callbacks iterate it.

genbound's own measures register themselves when :mod:`genbound.measures` is imported, in
the order their scalars appear in sweeps and their sections in reports. User measures are
found by name (``MODULE:ATTR``) or through the ``genbound.measures`` entry-point group
(:mod:`genbound.measures.user`) and are not added here: each report resolves its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from genbound.errors import GenboundError
from genbound.measures.base import SECTIONS, Measure, Scalar

_REGISTRY: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    """Add one of genbound's own measures (once per name); returns it."""
    if not measure.name:
        raise GenboundError(f"{type(measure).__name__}: a measure needs a name.")
    if measure.name in _REGISTRY:
        raise GenboundError(f"measure {measure.name!r} is already registered.")
    if measure.section not in SECTIONS:
        raise GenboundError(
            f"measure {measure.name!r}: section must be one of {SECTIONS}; "
            f"found {measure.section!r}."
        )
    _REGISTRY[measure.name] = measure
    return measure


def registered() -> tuple[Measure, ...]:
    """genbound's own measures, in registration order."""
    return tuple(_REGISTRY.values())


def get_measure(name: str) -> Measure:
    """The registered measure called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GenboundError(
            f"unknown measure {name!r}; expected one of {list(_REGISTRY)}."
        ) from None


def sweep_scalars() -> Iterator[tuple[str, Scalar]]:
    """Every registered measure's sweep scalars, as (name, scalar), in registry order."""
    for measure in _REGISTRY.values():
        yield from measure.scalars.items()


def compute_order(measures: list[Measure]) -> list[Measure]:
    """``measures`` in an order where each comes after the ones it reads (``after``), and
    otherwise in the given order."""
    names = {m.name for m in measures}
    done: set[str] = set()
    todo = list(measures)
    out: list[Measure] = []
    while todo:
        for i, m in enumerate(todo):
            if all(d in done or d not in names for d in m.after):
                out.append(todo.pop(i))
                done.add(m.name)
                break
        else:
            raise GenboundError(
                f"measures {[m.name for m in todo]} read each other's results (a cycle)."
            )
    return out
