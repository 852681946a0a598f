"""``GenboundLightningCallback``: genbound's measures inside a Lightning ``Trainer`` run.

::

    trainer = lightning.Trainer(callbacks=[GenboundLightningCallback(every_n_steps=50)])

Measurements run in ``on_train_batch_end`` once per optimizer step (``trainer.global_step``;
with gradient accumulation the other batches are skipped). Values go to every logger of
the trainer at that step (``logger.log_metrics``, whatever ``log_every_n_steps`` is) and,
through ``pl_module.log_dict(..., logger=False)``, to ``trainer.callback_metrics`` (as
float32 tensors, as Lightning stores them) for monitors and the progress bar.

Needs Lightning 2 (``pip install 'genbound[lightning]'``), imported when this module is.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from genbound.callbacks.hf import dataset_length
from genbound.callbacks.live import Trainable
from genbound.callbacks.tracker import BoundTracker
from genbound.errors import GenboundError

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - depends on the environment
    raise GenboundError(
        "GenboundLightningCallback needs Lightning 2 (the 'lightning' package); install it "
        "with: pip install 'genbound[lightning]'. The Hugging Face callback and BoundTracker "
        "work without it."
    ) from None


class GenboundLightningCallback(Callback):
    """A Lightning ``Callback`` running a :class:`BoundTracker`.

    Args:
        model: what trains: a PEFT model or a genbound ``AdapterHandle``. Default: the
            LightningModule's only ``peft.PeftModel`` submodule (looked up once; an error
            at the start of training when there is none or several).
        **tracker_options: the keyword arguments of
            :class:`~genbound.callbacks.tracker.BoundTracker`.

    Attributes:
        tracker: the :class:`BoundTracker`.
    """

    def __init__(self, model: Trainable | None = None, **tracker_options: Any):
        super().__init__()
        self.model = model
        self.tracker = BoundTracker(**tracker_options)

    def _target(self, pl_module: nn.Module) -> Trainable:
        if self.model is None:
            self.model = self._find_peft(pl_module)
        return self.model

    @staticmethod
    def _find_peft(pl_module: nn.Module) -> nn.Module:
        try:
            from peft import PeftModel
        except ImportError:
            found = []
        else:
            found = [m for m in pl_module.modules() if isinstance(m, PeftModel)]
        if len(found) != 1:
            raise GenboundError(
                "GenboundLightningCallback: expected the LightningModule to hold exactly one "
                f"PEFT model; found {len(found)}. Pass model=... (a PEFT model or a genbound "
                "AdapterHandle)."
            )
        return found[0]

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # the weights are the same on every process
            return
        self.tracker.note_training_set(dataset_length(trainer.train_dataloader))
        self.tracker.start(self._target(pl_module), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        values = self.tracker.step(self._target(pl_module), trainer.global_step)
        if not values:
            return
        for logger in trainer.loggers:
            logger.log_metrics(dict(values), step=trainer.global_step)
        pl_module.log_dict(dict(values), on_step=True, on_epoch=False, logger=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.tracker.finish(self._target(pl_module), trainer.global_step)
