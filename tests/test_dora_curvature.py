"""DoRA's curvature in its own coordinates (magnitude, B, A) and in its merged space.

The rebuilt DoRA layer is checked against PEFT's DoRA modules (the same function), its
factor-space Hessian against the exact Hessian of W(m, B, A) written out independently
and against second differences of the loss through PEFT's own model, and its merged
operator entry by entry against P H_W P with P the projector onto the span of W's
derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from test_adapters import MLP, save_base
from torch import nn

import genbound.adapters as ga
from genbound import load_checkpoint
from genbound.adapters.dora import DoraLayer
from genbound.curvature import MergedHessianOperator, top_eigenvalues
from genbound.report.measures import CURVATURE_SPACES, _curvature, measure_checkpoint
from genbound.tasks import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import adapter_objective, load_updates_into, resolve_parameter

N, M, R, S = 5, 6, 2, 0.5


def dora_mlp(seed: int = 0):
    """A two-layer MLP whose first layer is a DoRA layer with random (m, B, A), float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    X = torch.randn(80, M, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (80,), generator=gen)
    model = nn.Sequential(nn.Linear(M, N), nn.Tanh(), nn.Linear(N, 3)).double()
    B = torch.randn(N, R, dtype=torch.float64, generator=gen)
    A = torch.randn(R, M, dtype=torch.float64, generator=gen)
    mag = torch.rand(N, dtype=torch.float64, generator=gen) + 0.5
    model[0] = DoraLayer(model[0], B=B, A=A, magnitude=mag, scale=S)
    batches = [Batch(X[:50], y[:50]), Batch(X[50:], y[50:])]
    obj = Objective(model, batches, cross_entropy_loss, ("0.magnitude", "0.B", "0.A"))
    return obj, X, y


def dora_weight(w0, flat):
    """W(m, B, A) = diag(m / ||V||) V, V = W0 + s B A, from flat (m, B, A), written out."""
    m = flat[:N]
    b = flat[N : N + N * R].reshape(N, R)
    a = flat[N + N * R :].reshape(R, M)
    v = w0 + S * b @ a
    return (m / v.norm(dim=1))[:, None] * v


def test_factor_hessian_equals_the_exact_hessian_of_w_of_m_b_a():
    obj, X, y = dora_mlp()
    layer = obj.model[0]
    w0, b0 = layer.base.weight.detach(), layer.base.bias.detach()
    flat0 = torch.cat([layer.magnitude, layer.B.reshape(-1), layer.A.reshape(-1)]).detach()

    def loss(flat):
        h = X @ dora_weight(w0, flat).T + b0
        return nn.functional.cross_entropy(obj.model[2](torch.tanh(h)), y)

    H = torch.func.hessian(loss)(flat0).detach()
    ev = torch.linalg.eigvalsh(H).numpy()
    r = top_eigenvalues(obj, k=2, tol=1e-9)
    assert r.converged and r.dimension == N + N * R + R * M
    np.testing.assert_allclose(r.eigenvalues, ev[::-1][:2], rtol=1e-7)


def test_merged_operator_is_the_projected_w_hessian_entry_by_entry():
    obj, X, y = dora_mlp()
    layer = obj.model[0]
    w0 = layer.base.weight.detach()
    flat0 = torch.cat([layer.magnitude, layer.B.reshape(-1), layer.A.reshape(-1)]).detach()
    # the tangent space: the span of W's derivatives with respect to (m, B, A)
    J = torch.func.jacrev(lambda f: dora_weight(w0, f))(flat0).reshape(N * M, -1)
    U, sv, _ = torch.linalg.svd(J, full_matrices=False)
    rank = int((sv > sv[0] * 1e-10).sum())
    P = U[:, :rank] @ U[:, :rank].T

    def loss(e):
        h = layer(X) + X @ e.reshape(N, M).T
        return nn.functional.cross_entropy(obj.model[2](obj.model[1](h)), y)

    H = torch.func.hessian(loss)(torch.zeros(N * M, dtype=torch.float64)).detach()
    op = MergedHessianOperator(obj)
    assert op.layers[0].kind == "dora" and op.dimension == rank
    eye = torch.eye(N * M, dtype=torch.float64)
    own = op.layers[0].project(eye.reshape(-1, N, M)).reshape(N * M, -1).T
    torch.testing.assert_close(own, P, atol=1e-10, rtol=0)
    with op:
        full = op.matmat(eye)
    torch.testing.assert_close(full, P @ H @ P, atol=1e-12, rtol=1e-9)
    # more than LoRA's directions: the magnitude reaches rows LoRA's tangent space misses
    assert rank > R * M + N * R - R * R


def test_merged_curvature_does_not_depend_on_how_the_direction_is_factored():
    obj, *_ = dora_mlp()
    twin, *_ = dora_mlp()
    g = torch.tensor([[2.0, 1.0], [0.0, 0.25]], dtype=torch.float64)
    with torch.no_grad():
        twin.model[0].B.copy_(obj.model[0].B @ g)
        twin.model[0].A.copy_(torch.linalg.solve(g, obj.model[0].A))
    assert twin.mean_loss() == pytest.approx(obj.mean_loss(), rel=1e-12)
    a = top_eigenvalues(obj, k=2, parameterization="merged", tol=1e-9)
    b = top_eigenvalues(twin, k=2, parameterization="merged", tol=1e-9)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-7)


def _peft_dora(tmp_path):
    from conftest import build_peft, tiny_bert

    return build_peft(
        tmp_path,
        tiny_bert,
        dict(r=2, target_modules=["query", "value"], use_dora=True, modules_to_save=["classifier"]),
    )


def test_peft_dora_rebuilt_as_dora_layers_in_its_own_coordinates(tmp_path):
    """adapter_objective on a PEFT DoRA checkpoint: one DoRA layer per update computing
    PEFT's function; the top factor-space eigenvalue equals ARPACK on the exact Hessian of
    W(m, B, A) and the second difference of the loss through PEFT's own model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base_dir, adapter_dir, _ = _peft_dora(tmp_path)
    ckpt = load_checkpoint(adapter_dir)
    assert ckpt.variant == "dora"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (12, 7), generator=gen)
    y = torch.randint(0, 3, (12,), generator=gen)

    def fresh_base():
        return AutoModelForSequenceClassification.from_pretrained(
            base_dir, attn_implementation="eager"
        ).double()

    merged = load_updates_into(fresh_base(), ckpt).eval()
    names = {n for n, _ in merged.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    objective = Objective(merged, [Batch({"input_ids": ids}, y)], cross_entropy_loss, trainable)
    rebuilt, notes = adapter_objective(objective, ckpt)
    assert notes == []
    layers = [m for m in rebuilt.model.modules() if isinstance(m, DoraLayer)]
    assert len(layers) == 4

    peft = PeftModel.from_pretrained(fresh_base(), adapter_dir).eval()
    with torch.no_grad():
        ours = rebuilt.model(input_ids=ids).logits
        theirs = peft(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    top = top_eigenvalues(rebuilt, k=1, tol=1e-8, return_vectors=True)
    assert top.converged
    # the same coordinates in PEFT's model, in the operator's order
    peft_params = dict(peft.named_parameters())
    local = {"A": "lora_A.default.weight", "B": "lora_B.default.weight"}
    local["magnitude"] = "lora_magnitude_vector.default.weight"
    order = [n for n, _ in rebuilt.model.named_parameters() if n in set(rebuilt.trainable)]
    theirs_p = []
    for name in order:
        owner, _, leaf = name.rpartition(".")
        if leaf in local:
            key = f"{owner}.{local[leaf]}"
        else:  # the saved head
            key = f"{owner}.modules_to_save.default.{leaf}"
        match = [k for k in peft_params if k.endswith(key)]
        assert len(match) == 1, (name, key)
        theirs_p.append(peft_params[match[0]])
    assert sum(p.numel() for p in theirs_p) == top.dimension

    def peft_loss(flat):
        with torch.no_grad():
            saved = [p.detach().clone() for p in theirs_p]
            i = 0
            for p in theirs_p:
                p.add_(flat[i : i + p.numel()].view_as(p))
                i += p.numel()
            out = float(nn.functional.cross_entropy(peft(input_ids=ids).logits, y))
            for p, s in zip(theirs_p, saved, strict=True):
                p.copy_(s)
        return out

    v = top.vectors[:, 0]
    h = 1e-3
    second = (peft_loss(h * v) - 2 * peft_loss(0 * v) + peft_loss(-h * v)) / h**2
    assert second == pytest.approx(top.eigenvalues[0], rel=1e-5)

    # ARPACK on exact products of the loss with W(m, B, A) written out, on the base model
    base = fresh_base().eval()
    base_params = dict(base.named_parameters())
    start = [p.detach() for p in theirs_p]
    scales = {n: x.scale for n, x in rebuilt.model.named_modules() if isinstance(x, DoraLayer)}

    def hvp(vec):
        flat = torch.cat([p.reshape(-1) for p in start]).clone().requires_grad_(True)
        ps, i, sub = {}, 0, {}
        for name, p in zip(order, start, strict=True):
            sub[name] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        for name, p in base_params.items():
            ps[name] = p
        for layer_name in {n.rpartition(".")[0] for n in order if n.endswith(".magnitude")}:
            w0 = base_params[f"{layer_name}.weight"].detach()
            m, b, a = (sub[f"{layer_name}.{k}"] for k in ("magnitude", "B", "A"))
            v_ = w0 + scales[layer_name] * b @ a
            ps[f"{layer_name}.weight"] = (m / v_.norm(dim=1))[:, None] * v_
        for name in order:
            if not name.endswith((".magnitude", ".A", ".B")):  # the head
                ps[name] = sub[name]
        logits = torch.func.functional_call(base, ps, (), {"input_ids": ids}).logits
        loss = nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, flat, create_graph=True)
        (hv,) = torch.autograd.grad(g @ torch.as_tensor(vec, dtype=torch.float64), flat)
        return hv.detach().numpy()

    dim = top.dimension
    ref = eigsh(LinearOperator((dim, dim), matvec=hvp, dtype=np.float64), k=1, which="LA",
                tol=1e-10, return_eigenvectors=False)[0]  # fmt: skip
    assert top.eigenvalues[0] == pytest.approx(ref, rel=1e-7)


def test_peft_dora_report_curvature_is_in_its_merged_space(tmp_path):
    base_dir, adapter_dir, _ = _peft_dora(tmp_path)
    from transformers import AutoModelForSequenceClassification

    ckpt = load_checkpoint(adapter_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, attn_implementation="eager")
    merged = load_updates_into(base.double(), ckpt).eval()
    names = {n for n, _ in merged.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    ids = torch.randint(5, 60, (12, 7), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))
    objective = Objective(merged, [Batch({"input_ids": ids}, y)], cross_entropy_loss, trainable)
    rebuilt, notes = adapter_objective(objective, ckpt)
    cv = _curvature(rebuilt, "merged", 0, 6, 2, 5)
    assert not notes and cv.space == CURVATURE_SPACES["merged"]
    op = MergedHessianOperator(rebuilt)
    assert [lay.kind for lay in op.layers] == ["dora"] * 4 and not op.skipped
    head = sum(p.numel() for n, p in rebuilt.model.named_parameters() if "classifier" in n)
    reach = 0  # the rank of W(m, B, A)'s derivatives, layer by layer
    for lay in op.layers:
        mod = lay.module
        w0 = mod.base.weight.detach()

        def weight(m, b, a, w0=w0, s=mod.scale):
            v = w0 + s * b @ a
            return (m / v.norm(dim=1))[:, None] * v

        jac = torch.func.jacrev(weight, argnums=(0, 1, 2))(mod.magnitude, mod.B, mod.A)
        J = torch.cat([j.reshape(lay.n * lay.m, -1) for j in jac], dim=1).detach()
        reach += int(torch.linalg.matrix_rank(J))
    assert cv.top.dimension == op.dimension == reach + head
    assert reach > 4 * (2 * 32 + 32 * 2 - 4)  # beyond LoRA's directions


class _DoraTask:
    """The PEFT DoRA checkpoint's merged tiny BERT on a few random token sequences."""

    n_train = 24
    num_labels = 3
    description = "tiny bert on random tokens"

    def __init__(self, base_dir):
        self.base_dir = base_dir

    def objectives(self, ckpt):
        from transformers import AutoModelForSequenceClassification

        base = AutoModelForSequenceClassification.from_pretrained(
            self.base_dir, attn_implementation="eager"
        )
        merged = load_updates_into(base.double(), ckpt).eval()
        names = {n for n, _ in merged.named_parameters()}
        trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
        gen = torch.Generator().manual_seed(0)
        batches = [
            Batch({"input_ids": torch.randint(5, 60, (12, 7), generator=gen)},
                  torch.randint(0, 3, (12,), generator=gen))
            for _ in range(2)
        ]  # fmt: skip
        obj = Objective(merged, batches, cross_entropy_loss, trainable, "tiny bert")
        return obj, obj


def test_a_dora_report_has_its_merged_space_and_no_fallback_warnings(tmp_path):
    base_dir, adapter_dir, _ = _peft_dora(tmp_path)
    ckpt = load_checkpoint(adapter_dir)
    got = measure_checkpoint(
        ckpt,
        task=_DoraTask(base_dir),
        parts=("curvature", "landscape"),
        curvature_examples=10,
        landscape_steps=5,
        trace_products=3,  # one residual sample: the trace is not resolved
        density_probes=1,
        density_steps=4,
    )
    cv = got.curvature
    assert cv.space == CURVATURE_SPACES["merged"] and cv.examples == 10
    assert cv.sample.examples == 10 and cv.sample.stratified_by == "label"
    (warning,) = got.warnings  # the unresolved trace, once; nothing about DoRA
    assert warning.startswith("the Hessian trace is not resolved: Hutch++")
    # the random slice moves DoRA's factors; both slices pass through the checkpoint
    assert got.landscapes["random-filter"].space == "adapter"
    random, path = got.landscapes["random-filter"], got.landscapes["path"]
    assert random.centre_loss == pytest.approx(path.centre_loss, rel=1e-10)  # same function
    for ls in (random, path):
        assert ls.losses[np.flatnonzero(ls.xs == 0.0)[0]] == ls.centre_loss
        assert np.all(np.isfinite(ls.losses))


class _NotLinear(nn.Module):
    """A layer with a weight that adapters do not wrap."""

    def __init__(self, m, n):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, m))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_updates_kept_merged_give_one_note_per_reason(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, "lora", rank=2, targets=["fc1", "fc2"], seed=3)
    with torch.no_grad():
        for p in h.named_trainable_parameters().values():
            p.normal_()
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=9))
    other = MLP()
    other.fc1, other.fc2 = _NotLinear(32, 24), _NotLinear(24, 16)
    merged = load_updates_into(other, ckpt).eval()
    x, y = torch.randn(9, 32), torch.randint(0, 3, (9,))
    objective = Objective(merged, [Batch(x, y)], cross_entropy_loss, ("fc1.weight", "fc2.weight"))
    rebuilt, notes = adapter_objective(objective, ckpt)
    assert len(notes) == 1 and notes[0].startswith("2 update(s) of a module that is not a Linear")
    assert rebuilt.trainable == objective.trainable
