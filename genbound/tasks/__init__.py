"""Tasks: a checkpoint run on data (model in eval mode, per-example loss, train and test data)."""

from genbound.tasks.objective import Batch, Objective, PerExampleLoss, cross_entropy_loss

__all__ = ["Batch", "Objective", "PerExampleLoss", "cross_entropy_loss"]
