"""genbound.curvature against exact Hessians (torch.func.hessian) and PyHessian."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from genbound.adapters.asym import AsymLayer
from genbound.adapters.layers import SelectorLayer
from genbound.adapters.lora import LoraLayer
from genbound.curvature import (
    FACTORS,
    MERGED,
    HessianOperator,
    MergedHessianOperator,
    hessian_density,
    hessian_trace,
    top_eigenvalues,
)
from genbound.errors import GenboundError
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss


def mlp_objective(dtype=torch.float64, sizes=(40, 40, 20), seed=0):
    torch.manual_seed(seed)
    n = sum(sizes)
    X = torch.randn(n, 8, dtype=dtype)
    y = torch.randint(0, 3, (n,))
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)
    batches, start = [], 0
    for s in sizes:
        batches.append(Batch(X[start : start + s], y[start : start + s]))
        start += s
    names = tuple(n for n, _ in model.named_parameters())
    return Objective(model, batches, cross_entropy_loss, names), X, y


def exact_hessian(model, X, y, names):
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat):
        ps, i = {}, 0
        for n, s, k in zip(names, shapes, sizes, strict=True):
            ps[n] = flat[i : i + k].reshape(s)
            i += k
        out = torch.func.functional_call(model, ps, (X,))
        return nn.functional.cross_entropy(out, y)

    return torch.func.hessian(f)(flat0)


def test_top_eigenvalue_and_trace_match_exact_hessian():
    obj, X, y = mlp_objective()
    H = exact_hessian(obj.model, X, y, obj.trainable)
    ev = torch.linalg.eigvalsh(H).numpy()
    r = top_eigenvalues(obj, k=1)
    assert r.converged and r.iterations > 2 and r.parameterization == FACTORS
    assert abs(r.eigenvalues[0] - ev[-1]) <= 0.005 * abs(ev[-1])
    r3 = top_eigenvalues(obj, k=3, tol=1e-6)
    assert r3.converged
    np.testing.assert_allclose(r3.eigenvalues, ev[::-1][:3], rtol=1e-6)
    t = hessian_trace(obj, num_products=60, seed=3)
    exact = float(torch.trace(H))
    assert t.num_products == 60 and t.stderr > 0
    assert abs(t.trace - exact) <= 3 * t.stderr


def test_batches_weighted_by_size_and_graph_cache_agrees():
    obj, X, y = mlp_objective(sizes=(90, 10))
    one = Objective(obj.model, [Batch(X, y)], cross_entropy_loss, obj.trainable)
    v = torch.randn(HessianOperator(obj).size, 3, dtype=torch.float64)
    with HessianOperator(obj) as op:
        a = op.matmat(v)
        a2 = op.matmat(v)  # served from the cached graphs
    b = HessianOperator(one, cache_graphs=False).matmat(v)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, a2)
    H = exact_hessian(obj.model, X, y, obj.trainable)
    torch.testing.assert_close(a, H @ v, rtol=1e-9, atol=1e-12)


def test_graph_budget_keeps_leading_batches_and_recomputes_the_rest():
    """With a budget for one batch's saved activations, the first batch's graph is kept,
    the others recomputed every product; the products equal the exact Hessian's."""
    obj, X, y = mlp_objective(sizes=(40, 30, 20))
    H = exact_hessian(obj.model, X, y, obj.trainable)
    v = torch.randn(H.shape[0], 2, dtype=torch.float64)
    with HessianOperator(obj) as op:
        op.matmat(v)
        first = op.kept_bytes  # every batch fits the default budget
        assert op.kept_batches == 3 and first > 0
    with HessianOperator(obj) as op:
        op.graph_bytes = first // 2  # room for the first of three batches only
        a, a2 = op.matmat(v), op.matmat(v)
        assert op.kept_batches == 1 and 0 < op.kept_bytes <= op.graph_bytes
    with HessianOperator(obj) as op:
        op.graph_bytes = 0
        b = op.matmat(v)
        assert op.kept_batches == 0 and op.kept_bytes == 0
    torch.testing.assert_close(a, H @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a2, a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_reproducible_and_pattern_selection():
    obj, *_ = mlp_objective()
    a = top_eigenvalues(obj, k=2, seed=5)
    b = top_eigenvalues(obj, k=2, seed=5)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    d1, d2 = hessian_density(obj, seed=1), hessian_density(obj, seed=1)
    np.testing.assert_array_equal(d1.density, d2.density)
    r = top_eigenvalues(obj, params=["2.*"])
    assert r.params == "pattern 2.*" and r.dimension == 12 * 3 + 3
    r = top_eigenvalues(obj, params=["re:^0\\.weight$"])
    assert r.dimension == 96
    with pytest.raises(GenboundError):
        top_eigenvalues(obj, params=["nothing.*"])
    with pytest.raises(GenboundError):
        top_eigenvalues(obj, parameterization="cartesian")


def test_density_integrates_to_one_and_traces():
    obj, X, y = mlp_objective()
    H = exact_hessian(obj.model, X, y, obj.trainable)
    d = hessian_density(obj, num_probes=8, num_steps=40, seed=0)
    step = d.grid[1] - d.grid[0]
    assert abs(d.density.sum() * step - 1.0) < 1e-3
    np.testing.assert_allclose(d.weights.sum(1), 1.0, rtol=1e-10)
    ev = torch.linalg.eigvalsh(H).numpy()
    assert d.nodes[np.isfinite(d.nodes)].max() == pytest.approx(ev[-1], rel=1e-6)
    assert d.trace == pytest.approx(float(torch.trace(H)), rel=0.5)


def test_top_eigenvalue_matches_pyhessian():
    pyhessian = pytest.importorskip("pyhessian")
    obj, X, y = mlp_objective(dtype=torch.float32, sizes=(100,))
    model = obj.model
    saved_mode = [m.training for m in model.modules()]
    ours = top_eigenvalues(obj, k=1, params="all", tol=1e-4)
    torch.manual_seed(0)
    hes = pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
    theirs, _ = hes.eigenvalues(maxIter=200, tol=1e-5, top_n=1)
    for m, t in zip(model.modules(), saved_mode, strict=True):  # PyHessian never restores
        m.training = t
    for p in model.parameters():
        p.grad = None
    assert abs(ours.eigenvalues[0] - theirs[0]) <= 0.01 * abs(theirs[0])


# -- merged dW ---------------------------------------------------------------------------


def adapted_objective(layer_cls=LoraLayer, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    X = torch.randn(80, 6, dtype=dtype)
    y = torch.randint(0, 3, (80,))
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    model[0] = layer_cls(model[0], rank=2, scale=0.5, generator=g)
    with torch.no_grad():
        model[0].B.normal_(generator=g)
    trainable = tuple(
        n for n, p in model.named_parameters() if p.requires_grad and n.startswith("0.")
    )
    batches = [Batch(X[:50], y[:50]), Batch(X[50:], y[50:])]
    return Objective(model, batches, cross_entropy_loss, trainable), X, y


def exact_w_hessian(model, X, y):
    """Hessian of the mean loss with respect to E added to layer 0's weight, (nm x nm)."""
    layer = model[0]

    def f(e):
        h = layer(X) + X @ e.reshape(layer.n, layer.m).T
        return nn.functional.cross_entropy(model[2](model[1](h)), y)

    return torch.func.hessian(f)(torch.zeros(layer.n * layer.m, dtype=X.dtype))


def projector_matrix(op):
    lay = op.layers[0]
    eye = torch.eye(lay.n * lay.m, dtype=torch.float64)
    return lay.project(eye.reshape(-1, lay.n, lay.m)).reshape(lay.n * lay.m, -1).T


@pytest.mark.parametrize("layer_cls", [LoraLayer, AsymLayer])
def test_merged_curvature_matches_projected_w_hessian(layer_cls):
    obj, X, y = adapted_objective(layer_cls)
    layer = obj.model[0]
    op = MergedHessianOperator(obj)
    P = projector_matrix(op)
    torch.testing.assert_close(P @ P, P, atol=1e-10, rtol=0)
    # T is exactly the span of dW's derivatives with respect to the trained factors
    B, A, s = layer.B.detach(), layer.A.detach(), layer.scale
    cols = []
    for i in range(B.numel()):
        dB = torch.zeros_like(B).reshape(-1)
        dB[i] = 1
        cols.append((s * dB.reshape(B.shape) @ A).reshape(-1))
    if layer_cls is LoraLayer:
        for i in range(A.numel()):
            dA = torch.zeros_like(A).reshape(-1)
            dA[i] = 1
            cols.append((s * B @ dA.reshape(A.shape)).reshape(-1))
    J = torch.stack(cols, 1)
    torch.testing.assert_close(P @ J, J, atol=1e-10, rtol=0)
    assert op.dimension == int(torch.linalg.matrix_rank(J))
    H = exact_w_hessian(obj.model, X, y).detach()
    ev = torch.linalg.eigvalsh(P @ H @ P).numpy()
    r = top_eigenvalues(obj, k=2, parameterization="merged", tol=1e-8)
    assert r.parameterization == MERGED and r.converged
    np.testing.assert_allclose(r.eigenvalues, ev[::-1][:2], rtol=1e-6)
    t = hessian_trace(obj, num_products=24, parameterization="merged", seed=1)
    assert t.stderr > 0 and abs(t.trace - float(torch.trace(P @ H @ P))) <= 3 * t.stderr


def _selector_layer(base, *, rank, scale, generator):
    """A cLA-type layer on columns (4, 1, 4): a repeated column must count once."""
    return SelectorLayer(base, rank=3, scale=scale, plan=[torch.tensor([4, 1, 4])])


@pytest.mark.parametrize("layer_cls", [LoraLayer, AsymLayer, _selector_layer])
def test_merged_operator_is_the_projected_w_hessian_entry_by_entry(layer_cls):
    """Every column of the operator (rank-r tangent coordinates inside the model) against
    P H_W P from torch.func.hessian of a dense dW, P built from the layer's own projector."""
    obj, X, y = adapted_objective(layer_cls)
    op = MergedHessianOperator(obj)
    P = projector_matrix(op)
    eye = torch.eye(op.size, dtype=torch.float64)
    with op:
        full = op.matmat(eye)  # through the fused gather for the selector
    obj.model[0].fused = False  # torch.func cannot see inside the fused autograd.Function
    H = exact_w_hessian(obj.model, X, y).detach()
    torch.testing.assert_close(full, P @ H @ P, atol=1e-10, rtol=1e-8)
    assert op.num_products == op.size
    if layer_cls is _selector_layer:  # columns 1 and 4 of dW, all n rows
        assert op.dimension == 2 * obj.model[0].n == int(torch.linalg.matrix_rank(P))


@pytest.mark.parametrize("layer_cls", [LoraLayer, AsymLayer, _selector_layer])
def test_tangent_coordinates_are_the_merged_operator_seen_through_j(layer_cls):
    """In tangent coordinates the operator is J^T (P H_W P) J: the same non-zero spectrum
    and trace as the merged operator, on vectors of sum r (n + m) entries; the top
    eigenvalue and trace the algorithms report agree."""
    from genbound.curvature.algorithms import hutchpp, lanczos

    obj, X, y = adapted_objective(layer_cls)
    merged = MergedHessianOperator(obj)
    op = merged.in_coordinates()
    assert op.dimension == merged.dimension and op.size < merged.size
    eye = torch.eye(op.size, dtype=torch.float64)
    with op:
        C = op.matmat(eye)
        Pc = op.project(eye)
    obj.model[0].fused = False
    H = exact_w_hessian(obj.model, X, y).detach()
    P = projector_matrix(merged)
    torch.testing.assert_close(C, C.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(Pc @ Pc, Pc, atol=1e-10, rtol=0)  # a projector
    assert int(torch.linalg.matrix_rank(Pc)) == merged.dimension
    ev_c = torch.linalg.eigvalsh(C).numpy()
    ev_m = torch.linalg.eigvalsh(P @ H @ P).numpy()
    nz = lambda ev: np.sort(ev[np.abs(ev) > 1e-9])  # noqa: E731
    np.testing.assert_allclose(nz(ev_c), nz(ev_m), rtol=1e-8, atol=1e-10)
    assert float(torch.trace(C)) == pytest.approx(float(torch.trace(P @ H @ P)), rel=1e-9)
    obj.model[0].fused = True
    with merged.in_coordinates() as view:
        top = lanczos(view, 1, tol=1e-8)
        trace = hutchpp(view, 24, seed=1)
    assert top.converged and top.eigenvalues[0] == pytest.approx(ev_m.max(), rel=1e-6)
    assert abs(trace.trace - float(torch.trace(P @ H @ P))) <= 3 * trace.stderr


def test_merged_curvature_does_not_depend_on_the_factorisation():
    obj, *_ = adapted_objective()
    layer = obj.model[0]
    twin = copy.deepcopy(obj.model)
    M = torch.tensor([[2.0, 1.0], [0.0, 0.25]], dtype=torch.float64)
    with torch.no_grad():
        twin[0].B.copy_(layer.B @ M)
        twin[0].A.copy_(torch.linalg.solve(M, layer.A))
    obj2 = Objective(twin, obj.batches, obj.loss, obj.trainable)
    a = top_eigenvalues(obj, k=2, parameterization="merged", tol=1e-9)
    b = top_eigenvalues(obj2, k=2, parameterization="merged", tol=1e-9)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-6)
    fa = top_eigenvalues(obj, k=1, tol=1e-9).eigenvalues[0]
    fb = top_eigenvalues(obj2, k=1, tol=1e-9).eigenvalues[0]
    assert abs(fa - fb) > 1e-3 * abs(fa)  # (A, B) curvature depends on the factoring


def test_merged_curvature_on_peft_lora_equals_genbound_layer():
    peft = pytest.importorskip("peft")
    obj, *_ = adapted_objective()
    layer = obj.model[0]
    base = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        base[0].weight.copy_(layer.base.weight)
        base[0].bias.copy_(layer.base.bias)
        base[2].load_state_dict(obj.model[2].state_dict())
    cfg = peft.LoraConfig(r=2, lora_alpha=1.0, target_modules=["0"])  # scale 0.5
    pm = peft.get_peft_model(base, cfg)
    lora = pm.base_model.model[0]
    with torch.no_grad():
        lora.lora_A["default"].weight.copy_(layer.A)
        lora.lora_B["default"].weight.copy_(layer.B)
    trainable = tuple(n for n, p in pm.named_parameters() if p.requires_grad)
    pobj = Objective(pm, obj.batches, cross_entropy_loss, trainable)
    assert pobj.mean_loss() == pytest.approx(obj.mean_loss(), rel=1e-12)
    a = top_eigenvalues(obj, k=2, parameterization="merged", tol=1e-9)
    b = top_eigenvalues(pobj, k=2, parameterization="merged", tol=1e-9)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-6)
    fa = top_eigenvalues(obj, k=2, tol=1e-9)
    fb = top_eigenvalues(pobj, k=2, tol=1e-9)
    np.testing.assert_allclose(fa.eigenvalues, fb.eigenvalues, rtol=1e-6)


def test_lanczos_never_reports_two_iterations_as_converged():
    obj, *_ = mlp_objective()
    r = top_eigenvalues(obj, k=1, max_iter=2)
    assert r.iterations == 2 and not r.converged


def test_eigenvalue_tolerance_stops_earlier_and_bounds_the_error():
    obj, X, y = mlp_objective()
    H = exact_hessian(obj.model, X, y, obj.trainable)
    top = float(torch.linalg.eigvalsh(H)[-1])
    strict = top_eigenvalues(obj, k=1, tol=1e-6)
    loose = top_eigenvalues(obj, k=1, value_tol=1e-4)
    assert loose.converged and loose.value_tol == 1e-4
    assert loose.iterations <= strict.iterations
    assert abs(loose.eigenvalues[0] - top) <= 1e-4 * abs(top)
    assert loose.value_bounds[0] <= 1e-4


def test_parameters_the_loss_is_linear_in_have_zero_curvature():
    model = nn.Linear(3, 1)

    def loss(m, batch):  # linear in the bias: its gradient is a constant
        return m.bias.sum().expand(len(batch))

    X = torch.randn(5, 3)
    obj = Objective(model, [Batch(X, torch.zeros(5, dtype=torch.int64))], loss, ("bias",))
    r = top_eigenvalues(obj)
    assert r.eigenvalues[0] == 0.0 and r.converged


class _Matrix:
    """A symmetric matrix as an operator (``size``, ``matvec``)."""

    def __init__(self, a: torch.Tensor):
        self.a, self.size = a, a.shape[0]

    def matvec(self, v):
        return self.a @ v


@pytest.mark.parametrize("steps", [5, 12, 30])
def test_lanczos_tridiagonal_against_the_matrix(steps):
    from genbound.curvature.algorithms import lanczos_tridiagonal

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    evals = torch.linspace(-2.0, 5.0, 12, dtype=torch.float64)
    a = q @ torch.diag(evals) @ q.T
    v0 = torch.randn(12, generator=gen, dtype=torch.float64)
    alpha, beta, basis = lanczos_tridiagonal(_Matrix(a), v0 / v0.norm(), steps)
    j = min(steps, 12)
    assert len(alpha) == j and basis.shape == (12, j)
    # an orthonormal basis in which the operator is the tridiagonal T (Q^T A Q = T)
    np.testing.assert_allclose((basis.T @ basis).numpy(), np.eye(j), atol=1e-12)
    t = np.diag(alpha) + np.diag(beta[: j - 1], 1) + np.diag(beta[: j - 1], -1)
    np.testing.assert_allclose((basis.T @ a @ basis).numpy(), t, atol=1e-10)
    if j == 12:  # the whole space: T has exactly the matrix's eigenvalues
        np.testing.assert_allclose(np.linalg.eigvalsh(t), evals.numpy(), atol=1e-10)


def test_reports_switch_to_tangent_coordinates_for_long_vectors(monkeypatch):
    """Above COORDINATES_ABOVE entries the report's curvature runs in tangent coordinates
    and finds the same top eigenvalue (and an unbiased trace) as in dW coordinates."""
    import genbound.curvature.operator as operator
    from genbound.measures.curvature import hessian_curvature

    obj, X, y = adapted_objective()
    H = exact_w_hessian(obj.model, X, y).detach()
    P = projector_matrix(MergedHessianOperator(obj))
    exact = torch.linalg.eigvalsh(P @ H @ P).numpy()
    direct = hessian_curvature(obj, "merged", 0, 12, 1, 4)
    monkeypatch.setattr(operator, "COORDINATES_ABOVE", 0)
    coords = hessian_curvature(obj, "merged", 0, 12, 1, 4)
    for cv in (direct, coords):
        assert cv.top.eigenvalues[0] == pytest.approx(exact.max(), rel=2e-3)
        assert abs(cv.trace.trace - exact.sum()) <= 4 * cv.trace.stderr
    assert coords.top.dimension == direct.top.dimension
