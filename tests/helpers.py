"""Assertions shared by the tests."""

from __future__ import annotations

import numpy as np
import torch


def assert_rel_close(actual, expected, rtol: float, what: str = "") -> None:
    """||actual - expected|| <= rtol * ||expected|| (Frobenius), in float64."""
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    err = float(torch.linalg.vector_norm(a - e))
    ref = float(torch.linalg.vector_norm(e))
    assert err <= rtol * max(ref, 1e-300), (
        f"{what}: relative error {err / max(ref, 1e-300):.3g} > {rtol}"
    )


def merged_from_genbound(ckpt, base_state: dict) -> dict:
    """Base state dict with every genbound update added (stored orientation), in float64."""
    out = {k: v.to(torch.float64).clone() for k, v in base_state.items()}
    for u in ckpt.updates.values():
        key = ckpt.base.resolve(u.param)
        out[key] = out[key] + u.delta(torch.float64, stored=True)
    return out


def numpy_svals(x: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(x.detach().to(torch.float64).numpy(), compute_uv=False)
