"""Tasks: a checkpoint run on data (model in eval mode, per-example loss, the metric that
scores its outputs, train and test data)."""

from genbound.tasks.metric import (
    Metric,
    OutputLoss,
    classification,
    clipped_squared_error,
    mean_predictor_error,
)
from genbound.tasks.objective import (
    Batch,
    Forward,
    Objective,
    PerExampleLoss,
    cross_entropy_loss,
    loss_from,
    model_outputs,
)

__all__ = [
    "Batch",
    "Forward",
    "Metric",
    "Objective",
    "OutputLoss",
    "PerExampleLoss",
    "classification",
    "clipped_squared_error",
    "cross_entropy_loss",
    "loss_from",
    "mean_predictor_error",
    "model_outputs",
]
