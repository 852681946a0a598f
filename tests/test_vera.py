"""VeRA (dW = diag(b) B diag(d) A, shared frozen projections): genbound's layers against
PEFT's VeRA modules with the same seed, PEFT VeRA adapters read against their tensors by
hand and PEFT's merge, and VeRA's curvature against exact Hessians written out here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from safetensors.torch import load_file
from test_adapters import MLP, save_base
from torch import nn

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.adapters.vera import VeraLayer
from genbound.bounds.compression import trainable_tensors, with_trainable_tensors
from genbound.checkpoint.updates import VeraUpdate
from genbound.curvature import MergedHessianOperator, top_eigenvalues
from genbound.tasks import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import adapter_objective, load_updates_into, resolve_parameter

TARGETS = ["query", "value", "intermediate.dense"]
N, M, R = 5, 6, 3


def peft_vera(r=4, seed=7, **kw):
    from peft import VeraConfig, get_peft_model

    config = VeraConfig(r=r, target_modules=TARGETS, projection_prng_key=seed, **kw)
    return get_peft_model(tiny_bert(), config)


def random_vectors(named, seed=3):
    """Draw every b and d (PEFT's vera_lambda_b / _d, genbound's b / d) in name order."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(named):
            p.copy_(torch.randn(p.shape, generator=gen))


def test_layers_equal_peft_vera_with_the_same_seed():
    model = tiny_bert()
    h = ga.apply(model, "vera", rank=4, targets=TARGETS, seed=7, head=())
    pm = peft_vera()
    shared_a = pm.base_model.vera_A["default"]
    shared_b = pm.base_model.vera_B["default"]
    assert len(h.layers) == 6 and all(isinstance(x, VeraLayer) for x in h.layers.values())
    for name, layer in h.layers.items():
        peft_layer = pm.base_model.model.get_submodule(name)
        n, m = peft_layer.out_features, peft_layer.in_features
        assert torch.equal(layer.A, shared_a[:, :m]) and torch.equal(layer.B, shared_b[:n, :])
        assert torch.equal(layer.b, peft_layer.vera_lambda_b["default"])  # zero
        assert torch.equal(layer.d, peft_layer.vera_lambda_d["default"])  # 0.1
    assert h.num_trainable == h.num_trainable_by_formula() == 4 * (32 + 4) + 2 * (48 + 4)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the same random b and d in both
        for name, layer in h.layers.items():
            peft_layer = pm.base_model.model.get_submodule(name)
            for ours, theirs in (
                (layer.b, peft_layer.vera_lambda_b),
                (layer.d, peft_layer.vera_lambda_d),
            ):
                ours.copy_(torch.randn(ours.shape, generator=gen))
                theirs["default"].copy_(ours)
    ids = torch.randint(5, 60, (4, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, pm(input_ids=ids).logits)
    for name, dw in h.delta_weights().items():
        ref = pm.base_model.model.get_submodule(name).get_delta_weight("default")
        torch.testing.assert_close(dw, ref.double(), rtol=1e-6, atol=1e-7)


def _saved_peft_vera(tmp_path):
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    pm = peft_vera(modules_to_save=["classifier"])
    random_vectors([(n, p) for n, p in pm.named_parameters() if "vera_lambda" in n])
    with torch.no_grad():
        pm.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)
    pm.save_pretrained(tmp_path / "adapter")
    return base_dir, tmp_path / "adapter", pm


def test_peft_vera_adapter_read_against_its_tensors_and_peft_merge(tmp_path):
    base_dir, adapter_dir, pm = _saved_peft_vera(tmp_path)
    ckpt = load_checkpoint(adapter_dir, base=base_dir)
    raw = load_file(str(adapter_dir / "adapter_model.safetensors"))
    a_all = raw["base_model.vera_A"].double().numpy()
    b_all = raw["base_model.vera_B"].double().numpy()
    merged = pm.merge_and_unload().state_dict()
    w0 = tiny_bert().state_dict()
    veras = {k: u for k, u in ckpt.updates.items() if u.kind == "vera"}
    assert ckpt.variant == "vera" and len(veras) == 6
    for name, u in veras.items():
        key = f"base_model.model.{name}"
        b, d = (
            raw[f"{key}.vera_lambda_b"].double().numpy(),
            raw[f"{key}.vera_lambda_d"].double().numpy(),
        )
        n, m = u.shape
        by_hand = np.diag(b) @ b_all[:n] @ np.diag(d) @ a_all[:, :m]
        np.testing.assert_allclose(u.delta(torch.float64).numpy(), by_hand, rtol=1e-12, atol=1e-15)
        peft_dw = merged[f"{name}.weight"].double() - w0[f"{name}.weight"].double()
        torch.testing.assert_close(u.delta(torch.float64), peft_dw, rtol=1e-5, atol=1e-6)
        s = np.linalg.svd(by_hand, compute_uv=False)[: u.rank]
        np.testing.assert_allclose(u.singular_values(), s, rtol=1e-10, atol=1e-14)
        x = torch.randn(m, 3, dtype=torch.float64)
        np.testing.assert_allclose(u.matmul(x).numpy(), by_hand @ x.numpy(), rtol=1e-10)
        y = torch.randn(n, 2, dtype=torch.float64)
        np.testing.assert_allclose(u.rmatmul(y).numpy(), by_hand.T @ y.numpy(), rtol=1e-10)
        assert set(u.trained_tensors()) == {"b", "d"} and set(u.frozen_tensors()) == {"A", "B"}
        assert ckpt.formula_count(u) == (n + 4, True) and u.num_trainable == n + 4
    assert ckpt.num_trainable == ckpt.num_trainable_by_formula() == 4 * 36 + 2 * 52 + 3 * 32 + 3
    # the code pays for b and d only: A and B are fixed by the seed
    coded = trainable_tensors(ckpt)
    assert {k.rsplit("::", 1)[1] for k in coded if "classifier" not in k} == {"b", "d"}
    halved = with_trainable_tensors(ckpt, {k: 0.5 * v for k, v in coded.items()})
    for name, u in veras.items():  # b and d halved: dW / 4
        torch.testing.assert_close(
            halved.updates[name].delta(torch.float64), u.delta(torch.float64) / 4
        )


def test_peft_vera_rebuilt_as_vera_layers_computes_peft_function(tmp_path):
    from transformers import AutoModelForSequenceClassification

    base_dir, adapter_dir, pm = _saved_peft_vera(tmp_path)
    ckpt = load_checkpoint(adapter_dir, base=base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    merged = load_updates_into(base, ckpt).eval()
    names = {n for n, _ in merged.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    ids = torch.randint(5, 60, (6, 7), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
    objective = Objective(merged, [Batch({"input_ids": ids}, y)], cross_entropy_loss, trainable)
    rebuilt, notes = adapter_objective(objective, ckpt)
    assert not notes
    layers = [m for m in rebuilt.model.modules() if isinstance(m, VeraLayer)]
    assert len(layers) == 6
    vectors = {n for n in rebuilt.trainable if n.endswith((".b", ".d"))}
    assert len(vectors) == 12 and all(n in dict(rebuilt.model.named_parameters()) for n in vectors)
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt.model(input_ids=ids).logits, pm(input_ids=ids).logits, rtol=1e-5, atol=1e-6
        )


@pytest.mark.filterwarnings("ignore:Specified to not save vera_A and vera_B")
def test_a_vera_adapter_needs_its_projections_and_base(tmp_path):
    from peft import VeraConfig, get_peft_model

    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    pm = get_peft_model(tiny_bert(), VeraConfig(r=4, target_modules=TARGETS, save_projection=False))
    pm.save_pretrained(tmp_path / "noproj")
    with pytest.raises(GenboundError, match=r"VeRA projections missing.*base_model\.vera_A"):
        load_checkpoint(tmp_path / "noproj", base=base_dir)
    peft_vera().save_pretrained(tmp_path / "nobase")
    with pytest.raises(GenboundError, match="needs its base model"):
        load_checkpoint(tmp_path / "nobase")


def vera_mlp(seed: int = 0):
    """A two-layer MLP whose first layer is a VeRA layer with random (A, B, b, d), float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    X = torch.randn(70, M, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (70,), generator=gen)
    model = nn.Sequential(nn.Linear(M, N), nn.Tanh(), nn.Linear(N, 3)).double()
    A, B = (torch.randn(*s, dtype=torch.float64, generator=gen) for s in ((R, M), (N, R)))
    b, d = (torch.randn(k, dtype=torch.float64, generator=gen) for k in (N, R))
    model[0] = VeraLayer(model[0], A=A, B=B, b=b, d=d)
    batches = [Batch(X[:40], y[:40]), Batch(X[40:], y[40:])]
    return Objective(model, batches, cross_entropy_loss, ("0.b", "0.d")), X, y


def vera_weight(w0, A, B, flat):
    """W(b, d) = W0 + diag(b) B diag(d) A, from flat (b, d), written out."""
    b, d = flat[:N], flat[N:]
    return w0 + torch.diag(b) @ B @ torch.diag(d) @ A


def test_factor_hessian_equals_the_exact_hessian_of_b_and_d():
    obj, X, y = vera_mlp()
    layer = obj.model[0]
    w0, bias = layer.base.weight.detach(), layer.base.bias.detach()
    flat0 = torch.cat([layer.b, layer.d]).detach()

    def loss(flat):
        h = X @ vera_weight(w0, layer.A, layer.B, flat).T + bias
        return nn.functional.cross_entropy(obj.model[2](torch.tanh(h)), y)

    ev = torch.linalg.eigvalsh(torch.func.hessian(loss)(flat0).detach()).numpy()
    r = top_eigenvalues(obj, k=2, tol=1e-9)
    assert r.converged and r.dimension == N + R
    np.testing.assert_allclose(r.eigenvalues, ev[::-1][:2], rtol=1e-7)


@pytest.mark.parametrize("trained", [("0.b", "0.d"), ("0.b",), ("0.d",)])
def test_merged_operator_is_the_projected_w_hessian_entry_by_entry(trained):
    obj, X, y = vera_mlp()
    obj = dataclasses.replace(obj, trainable=trained)
    layer = obj.model[0]
    w0 = layer.base.weight.detach()
    flat0 = torch.cat([layer.b, layer.d]).detach()
    # the tangent space: the span of W's derivatives with respect to the trained vectors
    J = torch.func.jacrev(lambda f: vera_weight(w0, layer.A, layer.B, f))(flat0)
    cols = [*(range(N) if "0.b" in trained else ()), *(range(N, N + R) if "0.d" in trained else ())]
    J = J.reshape(N * M, N + R)[:, cols]
    U, sv, _ = torch.linalg.svd(J, full_matrices=False)
    rank = int((sv > sv[0] * 1e-10).sum())
    P = U[:, :rank] @ U[:, :rank].T

    def loss(e):
        h = layer(X) + X @ e.reshape(N, M).T
        return nn.functional.cross_entropy(obj.model[2](obj.model[1](h)), y)

    H = torch.func.hessian(loss)(torch.zeros(N * M, dtype=torch.float64)).detach()
    op = MergedHessianOperator(obj)
    assert op.layers[0].kind == "vera" and op.dimension == rank
    eye = torch.eye(N * M, dtype=torch.float64)
    own = op.layers[0].project(eye.reshape(-1, N, M)).reshape(N * M, -1).T
    torch.testing.assert_close(own, P, atol=1e-10, rtol=0)
    with op:
        full = op.matmat(eye)
    torch.testing.assert_close(full, P @ H @ P, atol=1e-12, rtol=1e-9)


def test_genbound_vera_run_saves_reloads_and_rebuilds(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, "vera", rank=3, targets=["fc1", "fc2"], seed=2)
    random_vectors([(n, p) for n, p in model.named_parameters() if n.endswith((".b", ".d"))])
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=5))
    for name, layer in h.layers.items():
        u = ckpt.updates[name]
        assert isinstance(u, VeraUpdate) and torch.equal(u.A, layer.A) and torch.equal(u.b, layer.b)
        n = u.shape[0]
        by_hand = torch.diag(layer.b.double()) @ layer.B.double() @ torch.diag(layer.d.double())
        torch.testing.assert_close(u.delta(torch.float64), by_hand @ layer.A.double())
        assert ckpt.formula_count(u) == (n + 3, True)
    # the projections are one pair of matrices, sliced: fc2 (16 x 24) uses fc1's (24 x 32)
    assert torch.equal(h.layers["fc2"].A, h.layers["fc1"].A[:, :24])
    assert torch.equal(h.layers["fc2"].B, h.layers["fc1"].B[:16])
