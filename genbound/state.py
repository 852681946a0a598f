"""Leave a model as found: the one context every analysis runs a user's model in.

:func:`preserved` records, on entry, everything an analysis may change on a model or in
the process, and puts it back on exit, also when the block raised:

* the train/eval flag of every submodule;
* every parameter's ``requires_grad`` flag and its ``.grad`` (the tensor found, or None);
* the ``_attn_implementation`` of every Hugging Face config on the model;
* the random number generators: torch's CPU generator and, where CUDA is initialised,
  every CUDA device's; numpy's global generator; Python's ``random``;
* with ``parameters=True``, the values of every parameter and buffer, bit-exact (a copy
  is held for the duration), and of every ``.grad`` found.

:func:`genbound.curvature.context.analysis_mode` builds on it (eval mode, eager
attention for the duration).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def attention_configs(model: nn.Module) -> list[object]:
    """The distinct Hugging Face configs (objects with ``_attn_implementation``) found on
    the model and its submodules."""
    seen: dict[int, object] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen[id(cfg)] = cfg
    return list(seen.values())


def attention_settings(model: nn.Module) -> list[object]:
    """The ``_attn_implementation`` of every distinct config in the model (for checks)."""
    return [getattr(c, "_attn_implementation", None) for c in attention_configs(model)]


def set_attention(cfg: object, implementation: object) -> None:
    """Set a config's ``_attn_implementation``; a config that refuses keeps its own."""
    with contextlib.suppress(Exception):  # transformers may validate the name and raise
        cfg._attn_implementation = implementation


class _RandomStates:
    """Every global random number generator's state: torch CPU, initialised CUDA devices,
    numpy and Python."""

    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = torch.cuda.get_rng_state_all() if cuda else None
        self.numpy = np.random.get_state()
        self.python = random.getstate()

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


@contextlib.contextmanager
def preserved(model: nn.Module, *, parameters: bool = False) -> Iterator[None]:
    """Run the block, then restore the model and the random generators as found.

    Args:
        model: the model (any ``nn.Module``); nothing of it changes on entry.
        parameters: also restore parameter, buffer and gradient values bit-exactly (a copy
            of each is held for the duration); without it they are not copied.

    Restored on exit, also when the block raises: submodule modes, ``requires_grad``
    flags, ``.grad`` tensors, attention settings and every global RNG (see the module
    docstring).
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.named_parameters())
    flags = [(p, p.requires_grad, p.grad) for _, p in params]
    attention = [(c, c._attn_implementation) for c in attention_configs(model)]
    rng = _RandomStates()
    saved: dict[str, torch.Tensor] = {}
    grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    if parameters:
        saved = {n: t.detach().clone() for n, t in (*params, *model.named_buffers())}
        grads = [(g, g.detach().clone()) for _, p in params if (g := p.grad) is not None]
    try:
        yield
    finally:
        rng.restore()
        for cfg, impl in attention:
            set_attention(cfg, impl)
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for p, flag, grad in flags:
                p.requires_grad_(flag)
                p.grad = grad
            for g, value in grads:
                g.copy_(value)
            now = dict(model.named_parameters()) | dict(model.named_buffers())
            for name, value in saved.items():
                if name in now:
                    now[name].copy_(value)
