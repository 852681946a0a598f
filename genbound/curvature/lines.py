"""Curvature of the loss along a direction of each of several layers' weights, per example.

For layer i with weight W_i and a direction V_i (same shape, math orientation n x m),
:func:`line_curvatures` gives, for every example e of an objective,

    c_{e,i} = d^2/dt^2 loss_e(W_i + t V_i) at t = 0,

so that the mean over examples is V_i^T H_i V_i, H_i the Hessian of the objective's mean
loss with respect to W_i alone (the diagonal block of layer i), with the whole weight free:
unlike :class:`~genbound.curvature.operator.MergedHessianOperator`, which restricts H to
the tangent space an adapter reaches, V_i need not lie there (a chain's earlier links,
DoRA's rescaled W0).

How: as the merged operator perturbs a layer, by a forward hook that adds
``t_e * x @ V_i^T`` to the layer's output (a Linear or Conv1D computes ``x @ W^T``), with
one scalar t_e per example of the batch (``t`` of shape (B,) at 0). One forward and one
backward (with graph) per batch, then one double backward per layer: the entry e of
d/dt (sum_f d loss_f / d t_f) is sum_f d^2 loss_f / dt_e dt_f, which is c_{e,i} when the
examples do not interact (eval mode), and whose sum over e is the exact second derivative
of the batch's loss along the shared direction in any case. The model runs in
:func:`~genbound.curvature.context.analysis_mode` (eval, eager attention, everything
restored after); its parameters are never written and the hooks are removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from genbound.curvature.context import analysis_mode
from genbound.errors import GenboundError

__all__ = ["line_curvatures"]


def _hook(index: int, direction: torch.Tensor, ts: list[torch.Tensor], name: str):
    def added(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        t = ts[index]
        if output.shape[0] != t.shape[0]:
            raise GenboundError(
                f"line curvature: layer {name!r} returned outputs of leading dimension "
                f"{output.shape[0]}; expected the batch's {t.shape[0]} examples first."
            )
        e = args[0].to(direction.dtype) @ direction.T
        return output + (t.view(-1, *[1] * (output.ndim - 1)) * e).to(output.dtype)

    return added


def line_curvatures(
    objective, directions: Sequence[tuple[str, nn.Module, torch.Tensor]]
) -> np.ndarray:
    """Per example and layer, the loss's second derivative along a direction of its weight.

    Args:
        objective: an :class:`~genbound.tasks.objective.Objective` (its per-example loss).
        directions: ``(name, module, V)`` per layer: a Linear or Conv1D module of
            ``objective.model`` and V (n x m, math orientation: n outputs, m inputs), the
            direction of its weight; ``name`` names it in errors.

    Returns:
        (examples, layers) float64: c_{e,i} = d^2 loss_e / dt^2 along W_i + t V_i at t = 0
        (loss units per t^2), examples in the objective's batch order; the column means
        are V_i^T H_i V_i for the mean loss.
    """
    model = objective.model
    out = np.zeros((objective.num_examples, len(directions)))
    ts: list[torch.Tensor] = [torch.zeros(0)] * len(directions)
    vs = [
        v.detach().to(device=module.weight.device, dtype=module.weight.dtype)
        for _, module, v in directions
    ]
    with analysis_mode(model), contextlib.ExitStack() as hooks:
        for p in model.parameters():
            p.requires_grad_(False)
        for i, ((name, module, _), v) in enumerate(zip(directions, vs, strict=True)):
            handle = module.register_forward_hook(_hook(i, v, ts, name))
            hooks.callback(handle.remove)
        row = 0
        for batch in objective.batches:
            b = len(batch)
            ts[:] = [torch.zeros(b, dtype=v.dtype, device=v.device, requires_grad=True) for v in vs]
            with torch.enable_grad():
                loss = objective.loss(model, batch).sum()
                grads = torch.autograd.grad(loss, ts, create_graph=True, allow_unused=True)
                for i, (g, t) in enumerate(zip(grads, ts, strict=True)):
                    if g is None or not g.requires_grad:  # the loss is linear in t: zero
                        continue
                    (h,) = torch.autograd.grad(g.sum(), t, retain_graph=True, allow_unused=True)
                    if h is not None:
                        out[row : row + b, i] = h.detach().double().cpu().numpy()
            row += b
    return out
