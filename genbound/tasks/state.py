"""Leave a model exactly as found: parameters, requires_grad, train/eval modes, RNG state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved_state(model: nn.Module, *, parameters: bool = False) -> Iterator[None]:
    """Restore the modes of every submodule, every ``requires_grad`` flag and torch's global
    RNG state on exit (also on errors); with ``parameters=True`` also the parameter values,
    bit-exact (a copy is kept for the duration)."""
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rng = torch.get_rng_state()
    saved = (
        {name: p.detach().clone() for name, p in model.named_parameters()} if parameters else None
    )
    try:
        yield
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
            if saved is not None:
                with torch.no_grad():
                    p.copy_(saved[name])
        torch.set_rng_state(rng)
