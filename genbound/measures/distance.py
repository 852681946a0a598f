"""``distance``: how far training moved the weights from where they started.

Data-free. Two distances (Jiang et al. 2020 evaluate both kinds):

* in the trained coordinates: ||theta - theta_0||_2 over the trained tensors
  (:func:`~genbound.bounds.compression.trainable_tensors`: B and A of low-rank updates, dW
  of dense ones, a subspace run's z), with theta_0 each tensor's value when its link
  started. theta_0 is known where the checkpoint records it (a genbound run's manifest
  ``initial``: LoRA's A, VeRA's d) or where it is zero by construction: dW of a dense
  update (relative to W0, or to a new tensor's recorded initial value), the factor that
  genbound's adapter layers start at zero (``origin``: B, VeRA's b) in a genbound run,
  a subspace run's z. Elsewhere (a PEFT checkpoint's A and B, a new tensor stored without
  its initial value) it is unknown: the distance is taken over the tensors whose start is
  known, and the others are named.
* in the merged space: ||dW||_F of each update (dW = W - W0, W0 the pretrained weight or
  a new tensor's recorded initial value) and their root-sum-square, the distance of the
  fine-tuned weights from the pretrained ones. A new tensor stored without its initial
  value has no known start and is left out, named.

Units: those of the weights. ``report.json``: ``distance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.checkpoint.updates import Update

#: How a start is known: the checkpoint records it, it is zero by construction, or not.
RECORDED, ZERO, UNKNOWN = "recorded", "zero", "unknown"


@dataclass(frozen=True)
class TensorDistance:
    """One trained tensor.

    Attributes:
        name: its name in :func:`~genbound.bounds.compression.trainable_tensors`
            (``"fc1::A"``).
        size: its number of scalars.
        start: how theta_0 is known: ``"recorded"``, ``"zero"`` or ``"unknown"``.
        distance: ||theta - theta_0||_2 (None when the start is unknown).
    """

    name: str
    size: int
    start: str
    distance: float | None


@dataclass(frozen=True)
class UpdateDistance:
    """One update's dW.

    Attributes:
        name: the update's name (its module or tensor).
        kind: the update's kind (``"lowrank"``, ``"dense"``, ...).
        shape: dW's shape (math orientation).
        start: ``"pretrained"`` (dW = W - W0), ``"recorded"`` (a new tensor minus its
            recorded initial value) or ``"unknown"`` (a new tensor stored without it).
        frobenius: ||dW||_F (None when the start is unknown).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    start: str
    frobenius: float | None


@dataclass(frozen=True)
class Distance:
    """Both distances from the start.

    Attributes:
        trained: ||theta - theta_0||_2 over the trained tensors whose start is known
            (None when no start is known).
        trained_scalars, scalars: scalars in that distance, and in all trained tensors.
        tensors: each trained tensor.
        merged: sqrt(sum over updates of ||dW||_F^2) over updates whose start is known.
        updates: each update.
    """

    trained: float | None
    trained_scalars: int
    scalars: int
    tensors: tuple[TensorDistance, ...]
    merged: float | None
    updates: tuple[UpdateDistance, ...]

    @property
    def unknown_tensors(self) -> list[str]:
        return [t.name for t in self.tensors if t.start == UNKNOWN]

    @property
    def unknown_updates(self) -> list[str]:
        return [u.name for u in self.updates if u.start == UNKNOWN]


def _root_sum_square(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return math.sqrt(sum(v * v for v in known)) if known else None


def _dense_start_unknown(update: Update) -> bool:
    """A tensor new to the model stored without its initial value: its dW is its value."""
    return update.is_new and getattr(update, "reference", None) is None


def tensor_start(checkpoint: Checkpoint, name: str) -> str:
    """How the start of trained tensor ``name`` (a key of ``trainable_tensors``) is known
    (see the module docstring)."""
    from genbound.checkpoint.updates import SEP

    if checkpoint.subspace is not None:
        return ZERO  # z starts at 0 in every link
    if checkpoint.initial is not None and name in checkpoint.initial:
        return RECORDED
    update_name, _, factor = name.partition(SEP)
    update = checkpoint.updates[update_name]
    if update.is_dense:
        return UNKNOWN if _dense_start_unknown(update) else ZERO
    origin = getattr(checkpoint.spec.layer, "origin", None)
    if checkpoint.format == "genbound" and factor.rpartition(SEP)[2] == origin:
        return ZERO  # genbound's adapter layers start it at zero in every link
    return UNKNOWN


def start_distances(checkpoint: Checkpoint) -> Distance:
    """Both distances of ``checkpoint`` from its start (module docstring), in float64."""
    import torch

    from genbound.bounds.compression import trainable_tensors

    tensors = []
    for name, value in trainable_tensors(checkpoint).items():
        start = tensor_start(checkpoint, name)
        theta = value.detach().to(torch.float64)
        if start == RECORDED:
            theta = theta - checkpoint.initial[name].detach().to(torch.float64)
        dist = float(torch.linalg.vector_norm(theta)) if start != UNKNOWN else None
        tensors.append(TensorDistance(name, theta.numel(), start, dist))
    updates = []
    for name, u in checkpoint.updates.items():
        if _dense_start_unknown(u):
            start, fro = UNKNOWN, None
        else:
            start = RECORDED if u.is_new else "pretrained"
            fro = float(torch.linalg.vector_norm(u.delta(torch.float64)))
        updates.append(UpdateDistance(name, u.kind, tuple(u.shape), start, fro))
    return Distance(
        trained=_root_sum_square([t.distance for t in tensors]),
        trained_scalars=sum(t.size for t in tensors if t.start != UNKNOWN),
        scalars=sum(t.size for t in tensors),
        tensors=tuple(tensors),
        merged=_root_sum_square([u.frobenius for u in updates]),
        updates=tuple(updates),
    )


def distance_json(d: Distance | None) -> dict | None:
    from genbound.report.serialize import jsonable

    if d is None:
        return None
    return {
        "trained": {
            "distance": d.trained,
            "scalars": d.trained_scalars,
            "of_scalars": d.scalars,
            "unknown_start": d.unknown_tensors,
            "tensors": jsonable(list(d.tensors)),
        },
        "merged": {
            "distance": d.merged,
            "unknown_start": d.unknown_updates,
            "updates": jsonable(list(d.updates)),
        },
    }


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class StartDistance(Measure):
    name = "distance"
    description = "distance of the trained tensors and of dW from where training started"
    section = "spectra"
    scalars: ClassVar[dict[str, Scalar]] = {
        "dist_trained": Scalar(
            lambda d: number(get(d, "distance", "trained", "distance")),
            "||theta - theta_0|| of the trained tensors (whose start is known)",
        ),
        "dist_merged": Scalar(
            lambda d: number(get(d, "distance", "merged", "distance")),
            "sqrt(sum of ||dW||_F^2): distance of the merged weights from their start",
        ),
    }

    def compute(self, ctx) -> Distance:
        return start_distances(ctx.checkpoint)

    def json(self, result, ckpt) -> dict:
        return {("distance",): distance_json(result)}

    def markdown(self, result: Distance, measures) -> list[str]:
        from genbound.numbers import format_number

        d = result
        lines = ["", "## Distance from the start", ""]
        if d.trained is None:
            lines.append(
                f"- trained tensors: unknown (the checkpoint records the start of none of "
                f"its {len(d.tensors)} trained tensors)"
            )
        else:
            part = (
                f" over {d.trained_scalars:,} of the {d.scalars:,} trained scalars (start "
                f"unknown for {_names(d.unknown_tensors)})"
                if d.unknown_tensors
                else f" over all {d.scalars:,} trained scalars"
            )
            lines.append(f"- trained tensors: ‖theta - theta_0‖ = {format_number(d.trained)}{part}")
        merged = "unknown" if d.merged is None else f"sqrt(sum ‖dW‖_F²) = {format_number(d.merged)}"
        left = (
            f" (left out, start unknown: {_names(d.unknown_updates)})" if d.unknown_updates else ""
        )
        lines += [
            f"- merged: {merged} over {len(d.updates)} updates{left}; dW from the pretrained "
            "weight W0 or, for a tensor new to the model, from its recorded initial value "
            "(each update's ‖dW‖_F is in the spectra table and in report.json)",
        ]
        return lines

    def reading(self, result: Distance, measures) -> list[str]:
        from genbound.numbers import format_number

        d = result
        if d.merged is None:
            return []
        trained = (
            f" and the trained tensors {format_number(d.trained)} from their start"
            if d.trained is not None
            else ""
        )
        return [
            f"Training moved the weights {format_number(d.merged)} (Frobenius norm of the "
            f"merged dW) from where they started{trained}; a distance alone is not known to "
            "predict the gap (Jiang et al. 2020 found flatness measures to track it better): "
            "compare it with the measured gap in a sweep."
        ]

    def log_values(self, result: Distance, *, per_layer: bool, intruder_eps: float) -> dict:
        out = {"dist_trained": result.trained, "dist_merged": result.merged}
        if per_layer:
            out.update({f"dist_merged/{u.name}": u.frobenius for u in result.updates})
        return {k: v for k, v in out.items() if v is not None}


register_measure(StartDistance())
