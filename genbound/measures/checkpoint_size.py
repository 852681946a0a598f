"""``num_trainable``: D, the number of trained scalars, read from the checkpoint itself.

Every report has it (it is part of the checkpoint's description); the measure only
contributes D to sweeps, where the bounds that charge per trained scalar are judged.
"""

from __future__ import annotations

from typing import ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, integer
from genbound.measures.registry import register_measure


class CheckpointSize(Measure):
    name = "size"
    description = "D, the number of trained scalars (always computed)"
    section = "measures"
    scalars: ClassVar[dict[str, Scalar]] = {
        "num_trainable": Scalar(
            lambda d: integer(get(d, "checkpoint", "num_trainable")), "D, trained scalars"
        )
    }

    def compute(self, ctx) -> None:
        """Nothing to compute: D is part of the checkpoint's own entry of ``report.json``."""
        return None


register_measure(CheckpointSize())
