"""Run an analysis on a model and leave it exactly as found.

:func:`analysis_mode` runs the block in :func:`genbound.state.preserved` (which restores
on exit the train/eval flag of every submodule, every parameter's ``requires_grad`` and
``.grad``, the attention settings and every global RNG, also when the analysis raised)
and, for the duration, puts the model in eval mode (dropout off), switches Hugging Face
attention to the eager implementation and every ``scaled_dot_product_attention`` call to
the MATH backend (the fused CPU kernels have no double backward). Parameters are never
written by curvature code; the landscape code restores them bit-exactly itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from genbound.state import attention_configs, attention_settings, preserved, set_attention

__all__ = ["analysis_mode", "attention_settings"]

_EAGER = "eager"


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and eager/MATH attention for the duration; everything restored after."""
    with preserved(model), contextlib.ExitStack() as stack:
        model.eval()
        for cfg in attention_configs(model):
            if cfg._attn_implementation not in (None, _EAGER):
                set_attention(cfg, _EAGER)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # pragma: no cover - old torch
            pass
        yield
