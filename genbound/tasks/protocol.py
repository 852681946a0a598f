"""What a task is: a checkpoint run on data.

A task rebuilds the fine-tuned model from a :class:`~genbound.checkpoint.Checkpoint` (base
weights plus the update, eval mode) and returns one :class:`~genbound.tasks.Objective`
for the training data and one for the test data. The gap, the compression bound,
curvature and landscapes all work on those objectives, and read what loss and error to
report, the error's range and chance level, and what N counts from the objectives'
:class:`~genbound.tasks.metric.Metric` (``objective.metric``; classification by default).

A task may also expose ``metric`` (the metric of its objectives) and, for classification,
``num_labels`` (K). Callers read both with ``getattr(task, name, None)``: a regression
task has no ``num_labels``.

Any object with these members is a task; :class:`~genbound.tasks.hf_text.TextClassificationTask`
is the built-in one. Example of a task of your own, for ``--task mypkg.tasks:digits``::

    from genbound.tasks import Batch, Objective, classification, cross_entropy_loss

    @dataclass(frozen=True)
    class DigitsTask:
        n_train: int = 1000
        num_labels: int = 10
        description: str = "an MLP on scikit-learn digits"

        def objectives(self, checkpoint):
            model = build_mlp()                      # the architecture the run trained
            load_updates_into(model, checkpoint)     # W0 + dW for every update
            model.eval()
            x, y = load_split("train")               # (N, 64) float32, (N,) int64
            batches = [Batch(x[i:i + 256], y[i:i + 256]) for i in range(0, len(y), 256)]
            trainable = tuple(u.param for u in checkpoint.updates.values())
            train = Objective(
                model, batches, cross_entropy_loss, trainable, "digits (train)",
                metric=classification(10),           # chance level 1 - 1/10
            )
            ...
            return train, test

    def digits(**kwargs):
        return DigitsTask(**kwargs)

A regression task scores its outputs with another metric, e.g. the squared error clipped
at R: ``metric = clipped_squared_error(R, chance=mean_predictor_error(y_train, R))`` and
``Objective(model, batches, loss_from(metric.loss), trainable, desc, metric=metric)``,
with float targets (B,) or (B, d) as the batches' ``labels``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.tasks.objective import Objective


@runtime_checkable
class Task(Protocol):
    """A checkpoint run on data.

    Attributes:
        n_train: N, the number of training units (examples; the run's whole training set).
        description: one line saying which model and data (for reports).

    Optional attributes (not part of the protocol's check; read with ``getattr(task, name,
    None)``):
        metric: the :class:`~genbound.tasks.metric.Metric` of its objectives.
        num_labels: number of classes of a classification task (the chance level of the 0-1
            error is 1 - 1/num_labels); None or absent for other tasks.
    """

    n_train: int
    description: str

    def objectives(self, checkpoint: Checkpoint) -> tuple[Objective, Objective]:
        """(train, test) objectives of the checkpoint's fine-tuned model in eval mode."""
        ...
