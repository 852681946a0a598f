"""genbound: generalization analysis for fine-tuned models.

Load a checkpoint (PEFT adapter, genbound run, or full fine-tune) with
:func:`load_checkpoint`; every analysis reads the resulting :class:`Checkpoint`.

The package imports torch only when something that needs it is first used, so the
command line answers ``--help``, ``--version`` and argument errors at once.
"""

import logging
import os

# Idle OpenMP threads sleep instead of spinning. With the default (spinning), torch's
# small LAPACK calls (the factor-space QRs and SVDs genbound makes by the hundred) run
# 10 to 100 times slower whenever another process keeps a core busy; passive waiting
# costs little on an idle machine. Takes effect only when genbound is imported before
# torch (as the CLI does) and never overrides a value the user set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
