"""The contract every measure meets, and the scalars a measure contributes to sweeps.

A :class:`Measure` is one module's worth of behaviour: what it needs, how it is computed
(from a :class:`~genbound.measures.context.MeasureContext`), where its result goes in
``report.json``, its ``report.md`` section and reading, the files it writes beside the
report, the scalars a sweep ranks against the gap, and the values a training callback logs.
Generic code (the report writer, the sweep, the callbacks) asks the registered measures
instead of knowing any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.measures.context import MeasureContext
    from genbound.measures.run import Measures

#: ``report.json`` entries of one measure: a path of keys -> the value there.
JsonEntries = Mapping[tuple[str, ...], Any]

#: Sections of ``report.md``, in order; a measure's lines go into its section.
SECTIONS = ("gap", "compression", "bounds", "curvature", "landscape", "spectra", "measures")


@dataclass(frozen=True)
class Scalar:
    """One number a sweep reads from each report and ranks against the measured gap.

    Attributes:
        read: report document -> the value (an int for counts), None when it is missing.
        description: what it is, for tables and axes.
        trivial: for a bound, report document -> the value at and above which it says
            nothing in that run (None: not a bound, or the report does not say).
        trivial_name: what that value is, in words.
        unit: its unit (``""`` for dimensionless numbers and counts).
        larger_gap: True when a larger value should mean a larger gap (bounds, norms,
            sharpness), False when a smaller one should, None when no direction is claimed.
    """

    read: Callable[[Mapping], float | int | None]
    description: str
    trivial: Callable[[Mapping], float | None] | None = None
    trivial_name: str = ""
    unit: str = ""
    larger_gap: bool | None = True


class Measure:
    """One measure. Subclasses set the class attributes and override what they compute.

    Attributes:
        name: its name: a part of ``--only``/``--skip`` for genbound's own measures, the key
            under ``"measures"`` in ``report.json`` for a user measure.
        description: one line, for listings.
        needs_task: computed only with a task (data); without one it is skipped with a
            message saying how to give data.
        after: names of measures whose results :meth:`compute` reads (computed first when
            they are requested; :meth:`compute` copes with their absence).
        section: the ``report.md`` section its lines go to (one of :data:`SECTIONS`).
        builtin: genbound's own (subject to ``--only``/``--skip``); a user measure is not.
        shown: whether a progress stage is shown while it computes (spectra shows a
            per-layer bar instead).
        scalars: the sweep scalars it contributes, by name, in order.
    """

    name: str = ""
    description: str = ""
    needs_task: bool = False
    after: tuple[str, ...] = ()
    section: str = "measures"
    builtin: bool = True
    shown: bool = True
    scalars: ClassVar[Mapping[str, Scalar]] = {}

    def compute(self, ctx: MeasureContext) -> Any:
        """The frozen result; raise :class:`~genbound.errors.GenboundError` to be skipped
        with its message."""
        raise NotImplementedError

    def json(self, result: Any | None, ckpt: Checkpoint) -> JsonEntries:
        """Its ``report.json`` entries (also with ``result`` None: what a report without it
        holds there, so every report has the same keys)."""
        return {}

    def markdown(self, result: Any, measures: Measures) -> list[str]:
        """Its ``report.md`` lines (``result`` is never None here)."""
        return []

    def reading(self, result: Any, measures: Measures) -> list[str]:
        """Sentences (without bullets) for the report's "What the numbers say"."""
        return []

    def write_files(self, result: Any, folder: Path) -> None:
        """Files beside ``report.json`` (figures go under ``folder / "figures"``)."""

    def log_values(self, result: Any, *, per_layer: bool, intruder_eps: float) -> dict[str, float]:
        """Values a training callback logs (keys without the ``genbound/`` prefix)."""
        return {}
