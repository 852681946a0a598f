"""Quantization-aware fine-tuning of a subspace run's z (Lotfi et al. 2022, "PAC-Bayes
compression bounds so tight that they can explain generalization").

The compression bound evaluates the model decoded from the quantized z, so a z trained
in float loses accuracy when quantized to 2^b levels. :func:`quantization_aware_fit`
fine-tunes z for a few epochs with the quantized z in the forward pass and a
straight-through estimator in the backward pass:

    z_q = z + stopgrad(Q(z) - z),    Q(z)_i = the level of the codebook nearest to z_i,

the codebook being Lloyd's 2^b levels fitted to the current z (the same fit the bound
uses, :func:`genbound.bounds.compression.lloyd_codebook`) rounded to the bound's codebook
precision. At the end z is replaced by Q(z): it holds at most 2^b distinct values, each
exactly representable at that precision, so the bound's b-bit candidate decodes exactly
the model that was fine-tuned (zero quantization error at that b).

A chained run cannot fine-tune a finished link (its factors are merged into the base
weight), so a chain is trained quantization-aware throughout: call it on the fresh handle
with the chain's epochs (``fit`` runs the chain steps; each link's z is stored quantized
when the link ends, as its factors were merged). Called after the chain's last link has
started, it fine-tunes that link only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from genbound.adapters.handle import AdapterHandle
from genbound.bounds.compression import lloyd_codebook
from genbound.errors import GenboundError
from genbound.train import SUBSPACE_LR, FitResult, fit

log = logging.getLogger(__name__)

#: Default learning rate of the quantization-aware epochs: a tenth of :data:`SUBSPACE_LR`
#: (z is already trained; the steps only move values between cells).
QAT_LR = SUBSPACE_LR / 10

_FLOATS = {16: np.float16, 32: np.float32}


class LloydSTE:
    """z -> z + stopgrad(Q(z) - z), Q the nearest of Lloyd's 2^``bits`` levels of z (levels
    rounded to ``codebook_bits``-bit floats)."""

    def __init__(self, bits: int, codebook_bits: int = 16):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise GenboundError(f"quantization-aware fit: bits must be in 1..16; found {bits!r}.")
        if codebook_bits not in _FLOATS:
            raise GenboundError(
                f"quantization-aware fit: codebook_bits must be 16 or 32; found {codebook_bits!r}."
            )
        self.bits, self.codebook_bits = bits, codebook_bits

    def levels(self, z: torch.Tensor) -> torch.Tensor:
        """The sorted codebook (2^bits,) of ``z``, float64, each level exactly a
        ``codebook_bits``-bit float."""
        values = z.detach().double().cpu().numpy()
        levels, _ = lloyd_codebook(values, 2**self.bits)
        stored = np.sort(levels.astype(_FLOATS[self.codebook_bits]).astype(np.float64))
        return torch.from_numpy(stored).to(z.device)

    def quantized(self, z: torch.Tensor) -> torch.Tensor:
        """Q(z): every value replaced by its nearest level (ties: the lower), in z's dtype."""
        levels = self.levels(z)
        mids = 0.5 * (levels[:-1] + levels[1:])
        idx = torch.searchsorted(mids, z.detach().double(), side="left")
        return levels[idx].to(z.dtype)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z + (self.quantized(z) - z).detach()


def quantization_aware_fit(
    handle: AdapterHandle,
    train_data: Dataset | Sequence[torch.Tensor],
    test_data: Dataset | Sequence[torch.Tensor] | None = None,
    *,
    bits: int,
    epochs: int = 1,
    lr: float = QAT_LR,
    codebook_bits: int = 16,
    **fit_kwargs: Any,
) -> FitResult:
    """Fine-tune a subspace run's z with its quantized value in the forward pass, then set
    z to that quantized value (module docstring). ``fit_kwargs`` go to
    :func:`genbound.train.fit` (``batch_size``, ``forward``, ``loss_fn``, ``seed``, ...);
    its evaluations after each epoch see the quantized z. Records ``qat_bits`` in the
    handle's hyperparameters. Returns fit's result.
    """
    sub = getattr(handle, "subspace", None)
    if sub is None:
        raise GenboundError(
            "quantization-aware fit: expected a subspace run (apply(..., subspace=d)); found a "
            f"{handle.variant.name!r} run that trains its factors directly."
        )
    if handle.chained and 0 < handle.links_done < handle.chain - 1:
        raise GenboundError(
            f"quantization-aware fit: the chain has started {handle.links_done + 1} of its "
            f"{handle.chain} links; expected a fresh chain (trained quantization-aware "
            "throughout) or its last link (fine-tuned)."
        )
    ste = LloydSTE(bits, codebook_bits)
    sub.quantizer = ste
    try:
        result = fit(handle, train_data, test_data, epochs=epochs, lr=lr, **fit_kwargs)
    finally:
        sub.quantizer = None
    with torch.no_grad():
        sub.z.copy_(ste.quantized(sub.z))
    sub.refresh()
    handle.hparams["qat_bits"] = int(bits)
    log.info(
        "quantization-aware fit: z on %d levels (%d distinct values)",
        2**bits,
        int(torch.unique(sub.z.detach()).numel()),
    )
    return result
