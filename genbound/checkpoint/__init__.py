"""Load fine-tuned checkpoints into one in-memory model (:class:`Checkpoint`)."""

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.load import load_checkpoint
from genbound.checkpoint.manifest import save_run, write_run
from genbound.checkpoint.model import Checkpoint, Hyperparams
from genbound.checkpoint.updates import (
    ChainUpdate,
    DenseUpdate,
    DoraUpdate,
    LowRankUpdate,
    SelectorUpdate,
    Update,
    VeraUpdate,
)

__all__ = [
    "BaseModel",
    "ChainUpdate",
    "Checkpoint",
    "DenseUpdate",
    "DoraUpdate",
    "Hyperparams",
    "LowRankUpdate",
    "SelectorUpdate",
    "Update",
    "VeraUpdate",
    "load_checkpoint",
    "save_run",
    "write_run",
]
