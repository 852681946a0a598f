"""Rebuild a fine-tuned model: the base model's weights plus each update of a checkpoint."""

from __future__ import annotations

import logging

import torch
from torch import nn

from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError

log = logging.getLogger(__name__)


def resolve_parameter(names: set[str], param: str) -> str | None:
    """The model parameter name that a checkpoint tensor name refers to.

    Tries the exact name, then with leading components dropped (``bert.encoder.x`` ->
    ``encoder.x``), then the unique model name ending with ``"." + param``.
    """
    if param in names:
        return param
    parts = param.split(".")
    for i in range(1, len(parts) - 1):
        cand = ".".join(parts[i:])
        if cand in names:
            return cand
    ends = [n for n in names if n.endswith("." + param)]
    return ends[0] if len(ends) == 1 else None


@torch.no_grad()
def load_updates_into(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """Set every updated parameter of a freshly built ``model`` to W0 + dW and return it.

    ``model`` must have been built from the checkpoint's base model (its other weights are
    used as they are). W0 comes from the base model's files (zero for a tensor new to the
    model, such as a fresh head), dW from the checkpoint, in the parameter's stored
    orientation and dtype. Raises a GenboundError naming any tensor the model lacks or
    whose shape differs.
    """
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    names = set(params) | set(buffers)
    for u in checkpoint.updates.values():
        target = resolve_parameter(names, u.param)
        if target is None:
            raise GenboundError(
                f"{checkpoint.path}: the checkpoint updates {u.param!r}, which the model has no "
                f"parameter for (e.g. {sorted(names)[:3]}); build the model the adapter was trained on."
            )
        tensor = params.get(target, buffers.get(target))
        w0 = u.base_weight(torch.float64)
        new = (w0.T if u.transposed else w0) + u.delta(torch.float64, stored=True)
        if tuple(new.shape) != tuple(tensor.shape):
            raise GenboundError(
                f"{checkpoint.path}: update of {u.param!r} has stored shape {tuple(new.shape)}, but the "
                f"model's {target!r} has shape {tuple(tensor.shape)}."
            )
        tensor.copy_(new.to(tensor.dtype))
    log.debug("loaded %d updates into %s", len(checkpoint.updates), type(model).__name__)
    return model
