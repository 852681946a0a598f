"""Data-free summaries of a checkpoint's updates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from genbound.checkpoint.model import Checkpoint


@dataclass(frozen=True)
class UpdateSummary:
    """One update as genbound understood it.

    Attributes:
        name: module (or tensor) name.
        kind: update kind (lowrank, selector, chain, dense, dora).
        shape: (n, m) outputs x inputs, or (n,).
        rank: structural rank bound.
        trainable: trained scalars behind this update.
        spectral_norm: ||dW||_2 (for a vector: its Euclidean norm), or None when it
            needs the base model and none is known.
        frobenius_norm: ||dW||_F, or None (same condition).
        singular_values: descending, float64 (empty when unavailable).
        unavailable: why the norms are missing, if they are.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int
    trainable: int
    spectral_norm: float | None
    frobenius_norm: float | None
    singular_values: tuple[float, ...]
    unavailable: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def summarize_updates(checkpoint: Checkpoint) -> Iterator[UpdateSummary]:
    """Yield one :class:`UpdateSummary` per update, computing one layer at a time."""
    from genbound.errors import GenboundError

    for name, u in checkpoint.updates.items():
        try:
            s = u.singular_values()
            spec, frob, why = float(s[0]) if s.size else 0.0, float(np.sqrt(np.sum(s**2))), None
        except GenboundError as exc:
            s, spec, frob, why = np.zeros(0), None, None, str(exc)
        yield UpdateSummary(
            name=name,
            kind=u.kind,
            shape=tuple(u.shape),
            rank=u.rank,
            trainable=u.num_trainable,
            spectral_norm=spec,
            frobenius_norm=frob,
            singular_values=tuple(float(x) for x in s),
            unavailable=why,
        )
