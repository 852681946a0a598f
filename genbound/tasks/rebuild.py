"""Rebuild a fine-tuned model: the base model's weights plus each update of a checkpoint,
merged, or with each factored update as an adapter layer (the coordinates that trained)."""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn

from genbound.adapters.layers import is_conv1d, is_linear
from genbound.adapters.registry import layer_for
from genbound.checkpoint.model import Checkpoint
from genbound.checkpoint.updates import Update
from genbound.errors import GenboundError
from genbound.tasks.objective import Objective

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


def adapter_objective(objective: Objective, checkpoint: Checkpoint) -> tuple[Objective, list[str]]:
    """The objective on a copy of its model in which every factored update is an adapter.

    ``objective`` evaluates the merged model (each updated parameter W0 + dW, as tasks
    build it). In the copy, the module of each update stored as factors is wrapped in the
    adapter layer that rebuilds its kind (:func:`genbound.adapters.registry.layer_for`;
    the layer's ``from_update``) with the checkpoint's factors: the base weight is W0 plus
    the earlier links of a chain, and the trained factors of the last link (B and A, or B
    alone; DoRA: its magnitude, B and A; VeRA: b and d) are parameters. Dense updates (full
    fine-tuning, a head, biases) stay as they are, in their own coordinates. The copy
    computes the same function up to float rounding, and ``trainable`` names the adapter's
    coordinates: Hessians and landscapes on it are in the space that was trained. The
    objective's own model is not touched.

    Returns the new objective and notes on updates kept merged (one note per reason,
    naming the updates).
    """
    model = copy.deepcopy(objective.model)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    trainable = list(objective.trainable)
    kept: dict[str, list[str]] = {}
    for u in checkpoint.updates.values():
        target = resolve_parameter(set(params), u.param)
        if target is None or target not in trainable or u.is_dense:
            continue  # dense updates stay, silently
        owner, _, leaf = target.rpartition(".")
        module = modules.get(owner)
        layer_cls = layer_for(u.last_link.kind)
        why = None
        if layer_cls is None:
            why = f"{u.kind} update(s) kept merged (no adapter layer for them)"
        elif leaf != "weight" or module is None or not (is_linear(module) or is_conv1d(module)):
            why = "update(s) of a module that is not a Linear/Conv1D kept merged"
        if why is not None:
            kept.setdefault(why, []).append(u.name)
            continue
        layer = _rebuilt(layer_cls, module, u)
        parent, _, child = owner.rpartition(".")
        setattr(modules[parent] if parent else model, child, layer)
        trainable.remove(target)
        trainable += [f"{owner}.{f}" for f in layer.trained]
    rebuilt = dataclasses.replace(
        objective,
        model=model,
        trainable=tuple(trainable),
        description=f"{objective.description}, adapter layers",
    )
    notes = [
        f"{len(names)} {why}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        for why, names in kept.items()
    ]
    return rebuilt, notes


@torch.no_grad()
def _rebuilt(layer_cls: type, module: nn.Module, update: Update) -> nn.Module:
    """``module`` (holding W0 + dW) set back to W0 plus the update's earlier links, wrapped
    by ``layer_cls`` with the factors of its last link."""
    w = module.weight
    base_w = update.base_weight(torch.float64)
    for earlier in update.earlier_links:
        base_w = base_w + earlier.delta(torch.float64)
    module.weight.copy_((base_w.T if update.transposed else base_w).to(w.dtype))
    return layer_cls.from_update(module, update.last_link)
