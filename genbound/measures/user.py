"""Measures of your own: a plain function, or a :class:`~genbound.measures.base.Measure`.

The simplest user measure is a function of the checkpoint, or of the checkpoint and the
task, returning a float or a mapping of str to float::

    def weight_norm(checkpoint):
        \"\"\"sum of ||dW||_F over the updates\"\"\"
        return sum(float(u.delta().norm()) for u in checkpoint.updates.values())

Its name is the function's name and its description the first line of its docstring. Name
it on the command line with ``--measure mypkg.measures:weight_norm`` (repeatable), in
Python with ``ReportOptions(measures=("mypkg.measures:weight_norm",))``, or install it for
every report through the ``genbound.measures`` entry-point group::

    [project.entry-points."genbound.measures"]
    weight_norm = "mypkg.measures:weight_norm"

Its value lands in ``report.json`` under ``"measures": {"weight_norm": ...}``, in
``report.md``, in the sweep's rows and correlations (a mapping as ``<name>.<key>``) and in
the training callbacks (``BoundTracker(measures=[...])``). A function that needs the task
(two parameters) is skipped in data-free reports. One that raises is recorded in the
report's ``skipped`` with its message; the rest of the report is unaffected.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from genbound.errors import GenboundError
from genbound.measures.base import SECTIONS, Measure
from genbound.options import MEASURE_SPEC

#: The entry-point group user measures are installed under.
ENTRY_POINT_GROUP = "genbound.measures"

UserValue = float | dict[str, float]
#: Names a sweep's rows already use (run facts and gap targets).
RESERVED = ("run", "variant", "rank", "chain", "seed", "vacuous", "user_measures")
RESERVED += ("gap_error", "gap_loss", "test_error", "train_error")


def _value(name: str, value: Any) -> UserValue:
    """A user measure's result as a float or a dict of str to float; a GenboundError
    naming the measure for anything else."""

    def num(x: Any, where: str) -> float:
        if isinstance(x, bool) or (not isinstance(x, (int, float)) and not hasattr(x, "__float__")):
            raise GenboundError(
                f"measure {name!r}: expected a number or a mapping of str to numbers; "
                f"found {type(x).__name__} at {where}."
            )
        try:
            return float(x)
        except (TypeError, ValueError) as exc:
            raise GenboundError(f"measure {name!r}: {where} is not a number ({exc}).") from None

    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise GenboundError(
                    f"measure {name!r}: expected str keys in its mapping; found {k!r}."
                )
            out[k] = num(v, f"key {k!r}")
        return out
    return num(value, "its result")


class FunctionMeasure(Measure):
    """A plain function ``f(checkpoint)`` or ``f(checkpoint, task)`` as a measure."""

    builtin = False
    section = "measures"

    def __init__(self, fn: Callable[..., Any], *, spec: str = ""):
        self.fn = fn
        self.spec = spec or f"{fn.__module__}:{fn.__qualname__}"
        self.name = getattr(fn, "__name__", "") or self.spec
        doc = inspect.getdoc(fn) or ""
        self.description = doc.strip().splitlines()[0] if doc.strip() else self.name
        self.needs_task = _arity(fn, self.spec) == 2

    def compute(self, ctx) -> UserValue:
        args = (ctx.checkpoint, ctx.task) if self.needs_task else (ctx.checkpoint,)
        return _value(self.name, self.fn(*args))

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        return {("measures", self.name): jsonable(result)} if result is not None else {}

    def markdown(self, result: UserValue, measures) -> list[str]:
        from genbound.numbers import format_number
        from genbound.report.html import table_cell

        what = table_cell(self.description)
        if isinstance(result, dict):
            return [
                f"| `{table_cell(f'{self.name}.{k}')}` | {format_number(v)} | {what} |"
                for k, v in result.items()
            ]
        return [f"| `{self.name}` | {format_number(result)} | {what} |"]

    def log_values(self, result: UserValue, *, per_layer: bool, intruder_eps: float) -> dict:
        return flat_values(self.name, result)


def flat_values(name: str, value: Any) -> dict[str, float]:
    """A user measure's value as sweep columns: ``{name: v}``, or ``{name.key: v}`` for a
    mapping (non-numbers dropped)."""
    from genbound.measures.reading import number

    if isinstance(value, Mapping):
        out = {f"{name}.{k}": number(v) for k, v in value.items()}
    else:
        out = {name: number(value)}
    return {k: v for k, v in out.items() if v is not None}


def _arity(fn: Callable[..., Any], spec: str) -> int:
    """How many positional arguments ``fn`` takes: 1 (checkpoint) or 2 (checkpoint, task)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise GenboundError(
            f"measure {spec}: expected a function of (checkpoint) or (checkpoint, task); "
            f"found one with {len(params)} required positional parameter(s)."
        )
    return len(params)


def as_measure(obj: Any, spec: str) -> Measure:
    """``obj`` (a Measure instance or class, or a function) as a user measure."""
    if isinstance(obj, type) and issubclass(obj, Measure):
        obj = obj()
    if isinstance(obj, Measure):
        if not obj.name:
            raise GenboundError(f"measure {spec}: a Measure needs a name.")
        if obj.section not in SECTIONS:
            raise GenboundError(
                f"measure {spec}: section must be one of {SECTIONS}; found {obj.section!r}."
            )
        obj = copy.copy(obj)  # the user's object stays as it was
        obj.builtin = False
        return obj
    if callable(obj):
        return FunctionMeasure(obj, spec=spec)
    raise GenboundError(
        f"measure {spec}: expected a function or a genbound Measure; found {type(obj).__name__}."
    )


def load_measure(spec: str) -> Measure:
    """The user measure ``MODULE:ATTR`` names (imported now, in this process)."""
    if not isinstance(spec, str) or not MEASURE_SPEC.fullmatch(spec):
        raise GenboundError(f"measure {spec!r}: expected MODULE:ATTR (e.g. mypkg.measures:norm).")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error of theirs, named
        raise GenboundError(
            f"measure {spec}: cannot import {module_name} ({type(exc).__name__}: {exc})."
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise GenboundError(f"measure {spec}: {module_name} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return as_measure(obj, spec)


def entry_point_specs() -> list[str]:
    """``MODULE:ATTR`` of every installed ``genbound.measures`` entry point, sorted by name."""
    from importlib.metadata import entry_points

    return [ep.value for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]


def user_measures(
    specs: Sequence[str], objects: Sequence[Any] = ()
) -> tuple[list[Measure], dict[str, str]]:
    """The measures ``specs`` and the installed entry points name, then ``objects``
    (functions or Measures given directly), and those that could not be loaded (spec or
    name -> why). A name taken by one of genbound's measures or scalars, by a sweep row's
    own fields, or by an earlier user measure, is refused."""
    from genbound.measures.registry import registered, sweep_scalars

    taken = {m.name for m in registered()} | {n for n, _ in sweep_scalars()} | set(RESERVED)
    loaded: list[tuple[str, Callable[[], Measure]]] = [
        (spec, lambda spec=spec: load_measure(spec))
        for spec in dict.fromkeys([*specs, *entry_point_specs()])
    ]
    for obj in objects:
        what = getattr(obj, "__name__", None) or getattr(obj, "name", "") or repr(obj)
        loaded.append((what, lambda obj=obj, what=what: as_measure(obj, what)))
    out: list[Measure] = []
    failed: dict[str, str] = {}
    for what, load in loaded:
        try:
            m = load()
        except GenboundError as exc:
            failed[what] = str(exc)
            continue
        if m.name in taken:
            failed[what] = (
                f"measure {what}: its name {m.name!r} is already taken by another measure; "
                "rename it"
            )
            continue
        taken.add(m.name)
        out.append(m)
    return out, failed
