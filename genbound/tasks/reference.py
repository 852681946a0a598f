"""Task references: ``{"task": "module:function", "kwargs": {...}}``.

A reference is what a genbound run folder records under ``data`` and what ``--task``
names on the command line. Loading it imports ``module``, calls ``function(**kwargs)``
and checks that the result is a :class:`~genbound.tasks.protocol.Task`. Because it is
plain JSON, a report can record exactly how its data were obtained.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genbound.errors import GenboundError
from genbound.tasks.protocol import Task


@dataclass(frozen=True)
class TaskReference:
    """``target`` is ``"package.module:function"``; ``kwargs`` its JSON keyword arguments."""

    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.target, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_json(cls, obj: Any, *, where: str = "task reference") -> TaskReference:
        """Parse ``{"task": "module:function", "kwargs": {...}}`` (``where`` names the source)."""
        if not isinstance(obj, Mapping) or not isinstance(obj.get("task"), str):
            raise GenboundError(
                f'{where}: expected a task reference {{"task": "module:function", '
                f'"kwargs": {{...}}}}; found {obj!r}.'
            )
        kwargs = obj.get("kwargs", {}) or {}
        if not isinstance(kwargs, Mapping):
            raise GenboundError(
                f'{where}: expected "kwargs" to be an object; found {type(kwargs).__name__}.'
            )
        return cls(obj["task"], dict(kwargs))


def _function(target: str, where: str):
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise GenboundError(f"{where}: expected 'package.module:function'; found {target!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GenboundError(f"{where}: cannot import module {module_name!r} ({exc}).") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise GenboundError(f"{where}: module {module_name!r} has no attribute {attr!r}.")
        fn = getattr(fn, part)
    if not callable(fn):
        raise GenboundError(f"{where}: {target!r} is not callable.")
    return fn


def load_task(ref: TaskReference, *, where: str = "task reference") -> Task:
    """Import and call the reference's function; check the result is a task."""
    fn = _function(ref.target, where)
    try:
        inspect.signature(fn).bind(**ref.kwargs)
    except TypeError as exc:
        raise GenboundError(
            f"{where}: {ref.target} does not take {dict(ref.kwargs)} ({exc})."
        ) from None
    except ValueError:
        pass  # no signature (builtins): let the call decide
    task = fn(**ref.kwargs)
    if not isinstance(task, Task):
        missing = [
            a
            for a in ("n_train", "num_labels", "description", "objectives")
            if not hasattr(task, a)
        ]
        raise GenboundError(
            f"{where}: {ref.target} returned a {type(task).__name__}, which is not a task "
            f"(missing {', '.join(missing)}); see genbound.tasks.protocol.Task."
        )
    if not isinstance(task.n_train, int) or task.n_train <= 0:
        raise GenboundError(
            f"{where}: {ref.target} returned a task with n_train={task.n_train!r}; expected a positive integer."
        )
    return task
