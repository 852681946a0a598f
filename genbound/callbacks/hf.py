"""``GenboundTrainerCallback``: genbound's measures inside a Hugging Face ``Trainer`` run.

::

    trainer = Trainer(model=peft_model, args=args, train_dataset=train)
    GenboundTrainerCallback(every_n_steps=50).attach(trainer)
    trainer.train()   # trainer.state.log_history now holds "genbound/..." entries

Measurements run in ``on_step_end`` (after the optimizer step of ``state.global_step``,
before the Trainer saves a checkpoint at that step, so a ``checkpoint-N`` holds the model
that was measured at step N). With :meth:`GenboundTrainerCallback.attach` the values go
through ``Trainer.log``: into ``state.log_history`` and to every reporter (TensorBoard,
W&B, ...; TensorBoard shows them as ``train/genbound/...``). Given to ``Trainer(callbacks=
[...])`` without ``attach``, a callback has no way to reach the reporters: the values go
to ``state.log_history`` only, and this is said once through ``logging``.

N is the length of the Trainer's training set unless ``n_train`` is given. In distributed
runs only the main process measures (the weights are the same on every process).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from genbound.callbacks.tracker import BoundTracker

log = logging.getLogger(__name__)


def dataset_length(loader: Any) -> int | None:
    """len(loader.dataset), or None when unknown (an iterable dataset, no loader)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


class GenboundTrainerCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` running a :class:`BoundTracker`.

    Takes the keyword arguments of :class:`~genbound.callbacks.tracker.BoundTracker`
    (``every_n_steps=50``, ``expensive_every_n_steps``, ``n_train``, ``base``,
    ``hessian_data``, ``gap_data``, ``per_layer``, ``run_dir``, ``snapshot_every_n_steps``,
    ...). The model is the Trainer's (a PEFT model).

    Attributes:
        tracker: the :class:`BoundTracker` (its ``history`` holds every measurement).
    """

    def __init__(self, **tracker_options: Any):
        self.tracker = BoundTracker(**tracker_options)
        self._trainer: Any = None
        self._said = False

    def attach(self, trainer: Any) -> GenboundTrainerCallback:
        """Log through ``trainer.log`` (reporters included); adds the callback if needed."""
        self._trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
        if not state.is_world_process_zero:  # the weights are the same on every process
            return
        self.tracker.note_training_set(dataset_length(train_dataloader))
        self.tracker.start(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kw):
        if not state.is_world_process_zero:
            return
        values = self.tracker.step(model, state.global_step)
        if not values:
            return
        if self._trainer is not None:
            # The handler's on_log clears should_log, which would drop the Trainer's own
            # loss entry of this step: keep the flag as the flow callback set it.
            should_log = control.should_log
            self._trainer.log(dict(values))
            control.should_log = should_log
            return
        state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})
        if not self._said:
            self._said = True
            log.info(
                "genbound: values go to trainer.state.log_history only; call "
                "GenboundTrainerCallback.attach(trainer) to send them to the reporters too"
            )

    def on_train_end(self, args, state, control, model=None, **kw):
        if state.is_world_process_zero:
            self.tracker.finish(model, state.global_step)
