"""The structured projection of subspace training against dense references."""

import math

import pytest
import torch

from genbound.adapters.projection import KronProjection, factor_shapes, make_projection
from genbound.errors import GenboundError

SIZES = [(1, 1), (5, 5), (10, 10), (100, 7), (300, 50), (1000, 1), (3375, 64), (4096, 300)]


@pytest.mark.parametrize("D,d", [(10, 10), (100, 7), (1000, 1), (10**7, 10**4), (513, 512)])
def test_factor_shapes_cover_D_and_d(D, d):
    shapes = factor_shapes(D, d)
    rows, cols = [r for r, _ in shapes], [c for _, c in shapes]
    assert math.prod(rows) >= D and math.prod(cols) >= d
    assert all(r >= c for r, c in shapes)
    assert max(cols) <= 8 or len(shapes) == 1


def _reference(P: KronProjection) -> torch.Tensor:
    """P built entry by entry from the factors: K[i, j] = prod_l Q_l[i_l, j_l]."""
    D, d = P.D, P.d
    out = torch.zeros(D, d, dtype=torch.float64)
    for i in range(D):
        for j in range(d):
            ii, jj, v = i, j, 1.0
            for q, r, c in reversed(list(zip(P.factors, P.rows, P.cols, strict=True))):
                v *= float(q[ii % r, jj % c])
                ii, jj = ii // r, jj // c
            out[i, j] = v
    return out / out.norm(dim=0)


@pytest.mark.parametrize("D,d", [(10, 10), (100, 7), (60, 13)])
def test_dense_matches_entrywise_reference(D, d):
    P = KronProjection(D, d, seed=3)
    assert torch.allclose(P.dense(), _reference(P), rtol=0, atol=1e-14)


@pytest.mark.parametrize("D,d", SIZES)
def test_products_match_dense(D, d):
    P = KronProjection(D, d, seed=7)
    M = P.dense()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(d, generator=gen, dtype=torch.float64)
    g = torch.randn(D, generator=gen, dtype=torch.float64)
    assert P.matvec(z).shape == (D,) and P.rmatvec(g).shape == (d,)
    assert torch.allclose(P.matvec(z), M @ z, rtol=0, atol=1e-12)
    assert torch.allclose(P.rmatvec(g), M.T @ g, rtol=0, atol=1e-12)
    # adjoint: <P z, g> = <z, P^T g>
    assert abs(float(P.matvec(z) @ g - z @ P.rmatvec(g))) < 1e-10


@pytest.mark.parametrize("D,d", SIZES)
def test_columns_have_unit_norm_and_factors_are_orthonormal(D, d):
    P = KronProjection(D, d, seed=11)
    assert torch.allclose(P.dense().norm(dim=0), torch.ones(d, dtype=torch.float64), atol=1e-13)
    for q in P.factors:
        eye = torch.eye(q.shape[1], dtype=torch.float64)
        assert torch.allclose(q.T @ q, eye, rtol=0, atol=1e-14)


def test_columns_orthonormal_when_rows_are_not_truncated():
    P = KronProjection(4096, 64, seed=2)  # 4096 = 64^2: every row of K is kept
    assert P.rows == [64, 64] and P.cols == [8, 8]
    M = P.dense()
    assert torch.allclose(M.T @ M, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-13)


def test_matvec_is_differentiable_with_gradient_P_transpose():
    P = KronProjection(300, 50, seed=5)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(300, generator=gen, dtype=torch.float64)
    z = torch.randn(50, generator=gen, dtype=torch.float64, requires_grad=True)
    (P.matvec(z) @ g).backward()
    assert torch.allclose(z.grad, P.rmatvec(g), rtol=0, atol=1e-12)


def test_deterministic_from_seed():
    a, b = KronProjection(4096, 300, seed=9), KronProjection(4096, 300, seed=9)
    for qa, qb in zip(a.factors, b.factors, strict=True):
        assert torch.equal(qa, qb)
    z = torch.randn(300, dtype=torch.float64)
    assert torch.equal(a.matvec(z), b.matvec(z))
    c = KronProjection(4096, 300, seed=10)
    assert not torch.equal(a.factors[0], c.factors[0])


def test_factors_are_the_seeded_gaussians_orthonormalised():
    """Independent check of the draws: QR of the same Gaussian matrices, signs fixed."""
    P = KronProjection(3000, 500, seed=4)
    gen = torch.Generator().manual_seed(4)
    for q, r, c in zip(P.factors, P.rows, P.cols, strict=True):
        g = torch.randn(r, c, generator=gen, dtype=torch.float64)
        qr, rr = torch.linalg.qr(g)
        qr = qr * torch.sign(torch.diagonal(rr))
        assert torch.allclose(q, qr, rtol=0, atol=1e-13)


def test_large_projection_is_cheap_and_norm_preserving():
    P = KronProjection(10**6, 2000, seed=0)
    assert sum(q.numel() for q in P.factors) < 2000
    z = torch.randn(2000, dtype=torch.float64)
    y = P.matvec(z)
    assert y.shape == (10**6,)
    assert abs(float(y.norm() / z.norm()) - 1) < 0.05


def test_bad_dimensions_and_kind():
    with pytest.raises(GenboundError, match="d = 11 is larger"):
        KronProjection(10, 11, seed=0)
    with pytest.raises(GenboundError, match="positive integer"):
        KronProjection(10, 0, seed=0)
    with pytest.raises(GenboundError, match="unknown projection kind 'dense'"):
        make_projection("dense", 10, 2, seed=0)
