"""genbound: generalization analysis for fine-tuned models.

Load a checkpoint (PEFT adapter, genbound run, or full fine-tune) with
:func:`load_checkpoint`; every analysis reads the resulting :class:`Checkpoint`.

The package imports torch only when something that needs it is first used, so the
command line answers ``--help``, ``--version`` and argument errors at once.
"""

import logging

from genbound.errors import GenboundError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "GenboundError", "Update", "__version__", "load_checkpoint"]

#: Public names imported on first use (each pulls in torch).
_LAZY = {
    "Checkpoint": "genbound.checkpoint",
    "Update": "genbound.checkpoint",
    "load_checkpoint": "genbound.checkpoint",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'genbound' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())
