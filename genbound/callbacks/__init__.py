"""genbound's measures while a model trains, logged next to the loss curves.

* :class:`BoundTracker`: any loop; call ``tracker.step(model, step)`` after each optimizer
  step (``model``: a PEFT model or a genbound ``AdapterHandle``).
* :class:`GenboundTrainerCallback`: Hugging Face ``Trainer`` (needs ``transformers``).
* :class:`GenboundLightningCallback`: Lightning ``Trainer`` (needs ``lightning``).

The framework callbacks are imported on first use, so this package imports without
transformers or Lightning. Logged keys and guarantees: see :mod:`genbound.callbacks.tracker`.
"""

from __future__ import annotations

from typing import Any

from genbound.callbacks.live import live_checkpoint, trainable_snapshot, write_live_run
from genbound.callbacks.tracker import BoundTracker, TrackedStep, measure_values

__all__ = [
    "BoundTracker",
    "GenboundLightningCallback",
    "GenboundTrainerCallback",
    "TrackedStep",
    "live_checkpoint",
    "measure_values",
    "trainable_snapshot",
    "write_live_run",
]

_LAZY = {
    "GenboundTrainerCallback": "genbound.callbacks.hf",
    "GenboundLightningCallback": "genbound.callbacks.lightning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genbound.callbacks' has no attribute {name!r}")
