"""Adapter structure in one place: every registered variant's layer and update kind say
which tensors train, which are frozen, how the update is rebuilt as a layer and its
tangent space; checked against the live training layers, against the Jacobian of the
merged weight computed here, and with an update kind defined only in this file."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from test_adapters import CHAINED, MLP, save_base
from torch import nn

import genbound.adapters as ga
from genbound import load_checkpoint
from genbound.adapters import registry
from genbound.adapters.dora import DoraLayer
from genbound.adapters.layers import AdaptedLayer, AdapterLayer
from genbound.adapters.registry import Variant, layer_for
from genbound.adapters.tangent import FactorTangent
from genbound.bounds.compression import compression_bound, trainable_tensors
from genbound.bounds.compression import with_trainable_tensors as with_tensors
from genbound.callbacks.live import checkpoint_updates
from genbound.checkpoint import DoraUpdate, LowRankUpdate, update_base, write_run
from genbound.checkpoint.updates import FactoredUpdate, update_kinds
from genbound.curvature import MergedHessianOperator
from genbound.tasks import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import adapter_objective, load_updates_into, resolve_parameter

WITH_LAYERS = sorted(name for name, v in ga.variants().items() if v.layer is not None)


@pytest.mark.parametrize("name", sorted(ga.variants()))
def test_every_variant_says_how_it_trains_and_what_rebuilds_it(name):
    v = ga.get_variant(name)
    if v.layer is not None:
        assert v.trainable and issubclass(v.layer, AdaptedLayer)
        # the update kind the layer saves is read back, and rebuilt by a layer of its family
        assert v.layer.kind in update_kinds() and issubclass(v.layer, layer_for(v.layer.kind))
        assert set(v.layer.trained) <= set(v.trains) or v.structure == "columns"
    else:  # full fine-tuning and head only train whole tensors; DoRA is only read
        assert v.structure in ("dense", "none") or not v.trainable
    if v.structure == "selector":
        assert v.plan is not None


def _random_factors(handle, gen):
    with torch.no_grad():
        for p in handle.named_trainable_parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen))


def _trained_run(name, tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    kw = {"chain": 3} if name in CHAINED else {}
    h = ga.apply(model, name, rank=2, targets=["fc1", "fc2"], seed=3, **kw)
    gen = torch.Generator().manual_seed(5)
    for link in range(h.chain):
        _random_factors(h, gen)
        if link < h.chain - 1:
            h.chain_step()
    return h, load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=9))


def merged_weight(layer: nn.Module, flat: torch.Tensor, names: list[str]) -> torch.Tensor:
    """W (n x m) of an adapter layer whose factors ``names`` are ``flat``, read off its
    outputs on the unit inputs: W^T = layer(I) - layer(0)."""
    shapes = [getattr(layer, n).shape for n in names]
    values, start = {}, 0
    for n, s in zip(names, shapes, strict=True):
        k = int(torch.Size(s).numel())
        values[n] = flat[start : start + k].reshape(s)
        start += k
    eye = torch.eye(layer.m, dtype=torch.float64)
    out = torch.func.functional_call(layer, values, (torch.cat([eye, 0 * eye[:1]]),))
    return (out[:-1] - out[-1:]).T


def check_tangent(layer: AdapterLayer, trained: tuple[str, ...]) -> int:
    """The layer's tangent space is the span of W's derivatives in its trained factors."""
    layer = layer.double()
    flat = torch.cat([getattr(layer, n).detach().reshape(-1) for n in trained])
    J = torch.func.jacrev(lambda f: merged_weight(layer, f, list(trained)))(flat)
    U, sv, _ = torch.linalg.svd(J.reshape(layer.n * layer.m, -1), full_matrices=False)
    rank = int((sv > sv[0] * 1e-10).sum())
    P = U[:, :rank] @ U[:, :rank].T
    tangent = layer.tangent(trained)
    eye = torch.eye(layer.n * layer.m, dtype=torch.float64)
    own = tangent.project(eye.reshape(-1, layer.n, layer.m)).reshape(layer.n * layer.m, -1).T
    assert tangent.dimension == rank
    torch.testing.assert_close(own, P, atol=1e-10, rtol=0)
    return rank


@pytest.mark.parametrize("name", WITH_LAYERS)
def test_updates_and_layers_answer_the_structure_questions(name, tmp_path):
    h, ckpt = _trained_run(name, tmp_path)
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    for key, live in h.layers.items():
        u = ckpt.updates[key]
        link = u.last_link
        # trained and frozen tensors, as the live layer has them
        assert set(link.trained_tensors()) == set(live.trained)
        assert set(link.frozen_tensors()) == set(live.frozen_names())
        assert set(link.trained_tensors()) | set(link.frozen_tensors()) == set(link.factors)
        assert set(live.trained) <= set(live.factor_names())
        assert sum(t.numel() for t in u.trained_tensors().values()) == u.num_trainable
        assert len(u.trained_tensors()) == len(live.trained) * (len(u.earlier_links) + 1)
        # rebuilt from the update: the same function, dW and coordinates
        rebuilt = layer_for(link.kind).from_update(copy.deepcopy(live.base), link)
        assert type(rebuilt) is type(live) or name == "paca"  # PaCA's columns: a selector
        assert set(rebuilt.trained) == set(live.trained)
        torch.testing.assert_close(rebuilt.link_delta(), link.delta(torch.float64))
        torch.testing.assert_close(rebuilt.link_delta(), live.link_delta())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x[:, : live.m]), live(x[:, : live.m]))
        if isinstance(rebuilt, nn.Module) and hasattr(rebuilt, "fused"):
            rebuilt.fused = False  # the fused gather has no vmap rule for jacrev
        assert check_tangent(rebuilt, tuple(sorted(rebuilt.trained))) > 0


def test_dora_layer_answers_the_structure_questions():
    gen = torch.Generator().manual_seed(0)
    base = nn.Linear(6, 5).double()
    low = LowRankUpdate(
        name="x",
        param="x.weight",
        shape=(5, 6),
        B=torch.randn(5, 2, dtype=torch.float64, generator=gen),
        A=torch.randn(2, 6, dtype=torch.float64, generator=gen),
        scale=0.5,
    )
    mag = torch.rand(5, dtype=torch.float64, generator=gen) + 0.5
    u = DoraUpdate(name="x", param="x.weight", shape=(5, 6), lowrank=low, magnitude=mag)
    assert set(u.trained_tensors()) == {"A", "B", "magnitude"} and not u.frozen_tensors()
    layer = layer_for(u.kind).from_update(base, u)
    assert isinstance(layer, DoraLayer) and not layer.additive
    assert set(layer.trained) == {"A", "B", "magnitude"}
    w0 = base.weight.detach().double()
    v = w0 + 0.5 * low.B @ low.A
    by_hand = (mag / v.norm(dim=1))[:, None] * v - w0
    torch.testing.assert_close(layer.link_delta(), by_hand)
    assert check_tangent(layer, ("A", "B", "magnitude")) > 2 * 6 + 5 * 2 - 4


# -- an update kind and a layer that only this file defines ------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class RowScaledUpdate(FactoredUpdate):
    """dW = diag(g) B A: fixed random B (n x r) and A (r x m), a trained row scale g (n,)."""

    kind: ClassVar[str] = "rowscaled"
    B: torch.Tensor
    A: torch.Tensor
    g: torch.Tensor
    trained: tuple[str, ...] = ("g",)

    @property
    def factors(self):
        return {"B": self.B, "A": self.A, "g": self.g}

    @property
    def num_trainable(self):
        return self.g.numel()

    def _delta64(self):
        return self.g.double()[:, None] * (self.B.double() @ self.A.double())

    @classmethod
    def from_link(cls, spec, common, read, where):
        return cls(**common, **{k: read.tensor(spec, k, where) for k in ("B", "A", "g")})


update_base._KINDS.pop("rowscaled")  # registered only while a test uses the fixture


class RowScaledLayer(AdaptedLayer):
    """y = W0 x + bias + g * (B (A x))."""

    kind = "rowscaled"
    trained = ("g",)
    origin = "g"

    def __init__(self, base, *, B, A, g):
        super().__init__(base, rank=B.shape[1], scale=1.0)
        self.register_buffer("B", B.detach().to(base.weight.dtype).clone())
        self.register_buffer("A", A.detach().to(base.weight.dtype).clone())
        self.g = nn.Parameter(g.detach().to(base.weight.dtype).clone())

    def update(self, x):
        return self.g * nn.functional.linear(nn.functional.linear(x, self.A), self.B)

    def link_tensors(self):
        return {k: getattr(self, k).detach().clone() for k in ("B", "A", "g")}

    @staticmethod
    def tensors_delta(t, scale, shape):
        return t["g"].double()[:, None] * (t["B"].double() @ t["A"].double())

    @classmethod
    def from_update(cls, base, update):
        return cls(base, B=update.B, A=update.A, g=update.g)

    def tangent(self, trained):
        rows = (self.B @ self.A).detach().double()  # g_i moves row i along (B A)_i
        norms = rows.norm(dim=1)
        keep = norms > 0
        mat = torch.diag(1 / norms.clamp_min(1e-300))[:, keep]
        return FactorTangent(self.n, self.m, None, None, (rows, mat))


@pytest.fixture
def rowscaled(monkeypatch):
    monkeypatch.setitem(update_base._KINDS, "rowscaled", RowScaledUpdate)
    monkeypatch.setitem(registry._LAYERS, "rowscaled", RowScaledLayer)
    variant = Variant("rowscaled", "row-scaled", "lowrank", ("g",), lambda n, m, r, k: n)
    monkeypatch.setitem(registry._REGISTRY, "rowscaled", variant)


def _rowscaled_run(tmp_path):
    """A run folder of the MLP whose fc1 and fc2 have row-scaled updates and whose head
    trained in full."""
    model = MLP()
    base = save_base(model, tmp_path)
    gen = torch.Generator().manual_seed(2)
    tensors, updates = {}, {}
    for name, (n, m) in {"fc1": (24, 32), "fc2": (16, 24)}.items():
        for k, shape in (("B", (n, 2)), ("A", (2, m)), ("g", (n,))):
            tensors[f"{name}.{k}"] = torch.randn(shape, generator=gen)
        link = {"kind": "rowscaled", **{k: f"{name}.{k}" for k in ("B", "A", "g")}}
        updates[name] = {"shape": [n, m], "link": link}
    tensors["head"] = 0.3 * torch.randn(3, 16, generator=gen)
    updates["classifier"] = {"shape": [3, 16], "link": {"kind": "dense", "delta": "head"}}
    manifest = {"variant": "rowscaled", "updates": updates, "base_model": base}
    return write_run(tmp_path / "run", manifest, tensors), tensors


def test_a_new_update_kind_is_read_coded_and_rebuilt_without_changes(rowscaled, tmp_path):
    run, tensors = _rowscaled_run(tmp_path)
    ckpt = load_checkpoint(run)
    for name in ("fc1", "fc2"):
        t = {k: tensors[f"{name}.{k}"].double() for k in ("B", "A", "g")}
        by_hand = torch.diag(t["g"]) @ t["B"] @ t["A"]
        torch.testing.assert_close(ckpt.updates[name].delta(torch.float64), by_hand)
    assert ckpt.num_trainable == 24 + 16 + 3 * 16
    assert ckpt.num_trainable_by_formula() == 24 + 16 + 3 * 16
    # compression codes g (and the head's dW) only: B and A are fixed
    coded = trainable_tensors(ckpt)
    assert set(coded) == {"fc1::g", "fc2::g", "classifier::delta"}
    doubled = with_tensors(ckpt, {k: 2 * v for k, v in coded.items()})
    torch.testing.assert_close(
        doubled.updates["fc2"].delta(torch.float64), 2 * ckpt.updates["fc2"].delta(torch.float64)
    )
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))

    def error(quantized):
        model = load_updates_into(MLP(), with_tensors(ckpt, quantized)).eval()
        with torch.no_grad():
            return float((model(x).argmax(1) != y).double().mean())

    result = compression_bound(coded, error, 20, bits=(2, 4))
    assert set(result.quantized) == set(coded) and 0 <= result.bound <= 1
    # rebuilt as the layer registered for the kind: same function, g trains
    merged = load_updates_into(MLP(), ckpt).eval()
    names = {n for n, _ in merged.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    objective = Objective(merged, [Batch(x, y)], cross_entropy_loss, trainable, "MLP")
    rebuilt, notes = adapter_objective(objective, ckpt)
    assert not notes and isinstance(rebuilt.model.fc1, RowScaledLayer)
    assert set(rebuilt.trainable) == {"fc1.g", "fc2.g", "classifier.weight"}
    assert rebuilt.mean_loss() == pytest.approx(objective.mean_loss(), rel=1e-6)
    op = MergedHessianOperator(rebuilt)
    assert [lay.kind for lay in op.layers] == ["rowscaled"] * 2
    assert op.dimension == 24 + 16 + 3 * 16
    assert check_tangent(rebuilt.model.fc2, ("g",)) == 16
    # written back by the update itself and read again
    written, t = checkpoint_updates(ckpt)
    again = load_checkpoint(write_run(tmp_path / "again", {"variant": "rowscaled",
                                                            "updates": written}, t))  # fmt: skip
    for name, u in ckpt.updates.items():
        torch.testing.assert_close(again.updates[name].delta(torch.float64), u.delta(torch.float64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_factor_basis_keeps_the_rank_of_half_precision_factors(dtype):
    """A LoRA factor stored in half precision (a bfloat16 model's) spans as many
    directions as numpy counts in float64 for the same stored values."""
    from genbound.adapters.tangent import basis

    gen = torch.Generator().manual_seed(0)
    for shape, rank in (((2048, 16), 16), ((256, 8), 8)):
        x = (0.01 * torch.randn(*shape, generator=gen)).to(dtype)
        q = basis(x)
        assert q.shape == (shape[0], np.linalg.matrix_rank(x.double().numpy())) == (shape[0], rank)
        # orthonormal, and spanning x's columns
        torch.testing.assert_close(q.T @ q, torch.eye(rank, dtype=torch.float64))
        xd = x.double()
        torch.testing.assert_close(q @ (q.T @ xd), xd, rtol=0, atol=1e-12)
    low = torch.randn(256, 3, generator=gen) @ torch.randn(3, 8, generator=gen)
    assert basis(low.to(dtype)).shape[1] >= 3  # rounding may add directions, never drop them
