"""The parts of a report, by the names ``--only`` and ``--skip`` use.

Kept free of heavy imports: the command line checks these names before it loads torch.
"""

from __future__ import annotations

from collections.abc import Collection

from genbound.errors import GenboundError

#: Parts computed from the checkpoint alone.
DATA_FREE_PARTS = ("spectra", "mi", "theorem1", "distance")
#: Parts that run the model on a task's data.
DATA_PARTS = (
    "gap",
    "compression",
    "token_bound",
    "pacbayes",
    "curvature",
    "landscape",
    "hessian_distance",
    "sharpness",
)
PARTS = DATA_FREE_PARTS + DATA_PARTS


def check_parts(parts: Collection[str], *, where: str = "parts") -> frozenset[str]:
    """``parts`` as a set, or a GenboundError naming ``where`` and the unknown names."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise GenboundError(f"{where}: unknown part(s) {unknown}; expected some of {list(PARTS)}.")
    return frozenset(parts)
