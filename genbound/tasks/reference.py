"""Task references: ``{"task": "module:function", "kwargs": {...}}``.

A reference is what a genbound run folder records under ``data`` and what ``--task``
names on the command line. Loading it imports ``module``, calls ``function(**kwargs)``
and checks that the result is a :class:`~genbound.tasks.protocol.Task`. Because it is
plain JSON, a report can record exactly how its data were obtained.

A reference recorded in a checkpoint resolves only to one of genbound's own task functions
(:data:`genbound.trust.TASKS`) unless the caller trusts it; see :mod:`genbound.trust`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genbound.errors import GenboundError
from genbound.tasks.protocol import Task
from genbound.trust import TASKS, checked_target, import_function


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


def load_task(ref: TaskReference, *, where: str = "task reference", trusted: bool = False) -> Task:
    """Import and call the reference's function; check the result is a task.

    Args:
        ref: the reference.
        where: its source, for messages (a file and key, or a command-line option).
        trusted: True for a reference the user gave (``--task``) or whose code the user
            trusts; False (default) for one recorded in a checkpoint, which then resolves
            only to genbound's own task functions.

    Raises:
        genbound.trust.UntrustedCode: ``ref`` names other code and ``trusted`` is False;
            nothing has been imported.
    """
    fn = import_function(checked_target(ref.target, TASKS, where=where, trusted=trusted), where)
    try:
        inspect.signature(fn).bind(**ref.kwargs)
    except TypeError as exc:
        raise GenboundError(
            f"{where}: {ref.target} does not take {dict(ref.kwargs)} ({exc})."
        ) from None
    except ValueError:
        pass  # no signature (builtins): let the call decide
    try:
        task = fn(**ref.kwargs)
    except (TypeError, ValueError) as exc:  # arguments of the wrong type or value
        raise GenboundError(
            f"{where}: {ref.target} cannot take the arguments {dict(ref.kwargs)} "
            f"({type(exc).__name__}: {str(exc).strip()[:300]})."
        ) from None
    if not isinstance(task, Task):
        missing = [a for a in ("n_train", "description", "objectives") if not hasattr(task, a)]
        raise GenboundError(
            f"{where}: {ref.target} returned a {type(task).__name__}, which is not a task "
            f"(missing {', '.join(missing)}); see genbound.tasks.protocol.Task."
        )
    if not isinstance(task.n_train, int) or task.n_train <= 0:
        raise GenboundError(
            f"{where}: {ref.target} returned a task with n_train={task.n_train!r}; expected a positive integer."
        )
    return task
