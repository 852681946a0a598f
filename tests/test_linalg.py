"""Factor-space SVDs and products of every update kind against dense numpy on the merged dW."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_rel_close

from genbound.checkpoint import ChainUpdate, DenseUpdate, LowRankUpdate, SelectorUpdate

N, M = 9, 14
g = torch.Generator().manual_seed(0)


def _updates():
    common = dict(name="w", param="w.weight", shape=(N, M))
    low = LowRankUpdate(
        **common, B=torch.randn(N, 3, generator=g), A=torch.randn(3, M, generator=g), scale=-0.7
    )
    sel = SelectorUpdate(
        **common, B=torch.randn(N, 4, generator=g), indices=torch.tensor([5, 1, 5, 13]), scale=1.3
    )
    chain_sel = ChainUpdate(
        **common,
        links=(
            SelectorUpdate(
                **common, B=torch.randn(N, 2, generator=g), indices=torch.tensor([0, 1])
            ),
            SelectorUpdate(
                **common, B=torch.randn(N, 2, generator=g), indices=torch.tensor([2, 3]), scale=2.0
            ),
        ),
    )
    chain_mixed = ChainUpdate(**common, links=(low, sel))
    dense_delta = torch.randn(N, M, generator=g)
    chain_dense = ChainUpdate(
        **common, links=(DenseUpdate(**common, value=lambda: dense_delta), low)
    )
    wide = DenseUpdate(name="d", param="d.weight", shape=(N, M), value=lambda: dense_delta)
    tall_t = torch.randn(M, N, generator=g)
    tall = DenseUpdate(name="t", param="t.weight", shape=(M, N), value=lambda: tall_t)
    zero = LowRankUpdate(**common, B=torch.zeros(N, 2), A=torch.randn(2, M, generator=g), scale=2.0)
    return {
        "lowrank": low,
        "selector-repeated": sel,
        "chain-selectors": chain_sel,
        "chain-mixed": chain_mixed,
        "chain-dense": chain_dense,
        "dense-wide": wide,
        "dense-tall": tall,
        "zero": zero,
    }


UPDATES = _updates()


@pytest.mark.parametrize("kind", list(UPDATES))
def test_svd_and_products_match_dense(kind):
    u = UPDATES[kind]
    dense = u.delta(torch.float64).numpy()
    ref = np.linalg.svd(dense, compute_uv=False)
    s = u.singular_values()
    np.testing.assert_allclose(s, ref[: s.shape[0]], rtol=1e-12, atol=1e-12 * max(ref[0], 1.0))
    assert np.all(ref[s.shape[0] :] <= 1e-12 * max(ref[0], 1.0))
    thin = u.svd()
    np.testing.assert_allclose(thin.S, s[: thin.rank], rtol=1e-12, atol=1e-13)
    recon = thin.U.numpy() @ np.diag(thin.S) @ thin.V.numpy().T
    np.testing.assert_allclose(recon, dense, atol=1e-12 * max(ref[0], 1.0))
    nz = thin.S > 1e-12 * max(ref[0], 1.0)  # orthonormal singular vectors where S > 0
    np.testing.assert_allclose(
        thin.U.numpy()[:, nz].T @ thin.U.numpy()[:, nz], np.eye(nz.sum()), atol=1e-12
    )
    x = torch.randn(u.shape[1], 3, generator=g, dtype=torch.float64)
    y = torch.randn(u.shape[0], 2, generator=g, dtype=torch.float64)
    assert_rel_close(u.matmul(x), dense @ x.numpy(), 1e-13)
    assert_rel_close(u.rmatmul(y), dense.T @ y.numpy(), 1e-13)


def test_zero_update_has_zero_spectrum():
    s = UPDATES["zero"].singular_values()
    assert s.shape == (2,) and np.all(s == 0.0)
