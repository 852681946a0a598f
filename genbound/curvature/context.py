"""Run an analysis on a model and leave it exactly as found.

:func:`analysis_mode` puts the model in eval mode (dropout off), switches Hugging Face
attention to the eager implementation and every ``scaled_dot_product_attention`` call to
the MATH backend (the fused CPU kernels have no double backward), and saves the global
torch RNG state. On exit it restores the train/eval flag of every submodule, every
parameter's ``requires_grad``, the attention settings and the RNG state, also when the
analysis raised. Parameters are never written by curvature code; the landscape code
restores them bit-exactly itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_EAGER = "eager"


def _attention_configs(model: nn.Module) -> list[object]:
    """Distinct Hugging Face configs found on the model and its submodules."""
    seen: dict[int, object] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen[id(cfg)] = cfg
    return list(seen.values())


def attention_settings(model: nn.Module) -> list[object]:
    """The ``_attn_implementation`` of every distinct config in the model (for checks)."""
    return [getattr(c, "_attn_implementation", None) for c in _attention_configs(model)]


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, eager/MATH attention and a saved RNG state for the duration; all restored."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    rng = torch.get_rng_state()
    configs = [(c, c._attn_implementation) for c in _attention_configs(model)]
    stack = contextlib.ExitStack()
    try:
        model.eval()
        for cfg, impl in configs:
            if impl not in (None, _EAGER):
                with contextlib.suppress(Exception):
                    cfg._attn_implementation = _EAGER
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # pragma: no cover - old torch
            pass
        yield
    finally:
        stack.close()
        for cfg, impl in configs:
            with contextlib.suppress(Exception):
                cfg._attn_implementation = impl
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
        torch.set_rng_state(rng)
