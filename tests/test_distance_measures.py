"""The ``distance`` and ``hessian_distance`` measures on a tiny MLP: distances against the
parameters' own moves in numpy, q = dW^T H dW against torch.func.hessian of the loss in the
flattened merged weight (and per-example values against torch.func jvp-of-grad), a report
written end to end, and the model left as found."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_adapters import MLP, save_base
from test_subspace_bound import toy_task

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.checkpoint import write_run
from genbound.curvature.operator import MergedHessianOperator
from genbound.measures import measure_checkpoint
from genbound.measures.distance import start_distances
from genbound.measures.hessian_distance import hessian_distance
from genbound.measures.registry import sweep_scalars
from genbound.options import ReportOptions
from genbound.report.writer import write_report
from genbound.tasks.metric import classification
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import adapter_objective, load_updates_into
from genbound.tasks.sampling import sample_objective
from genbound.train import fit

N = 24  # examples: batches of 16 and 8 (a short last batch)
SCALE = 0.3


def applied(tmp_path, variant, **kw):
    """(the MLP, its saved base, the handle of ``variant`` on fc1 and fc2, head trained)."""
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(
        model, variant, rank=2, alpha=4.0, targets=["fc1", "fc2"], head=["classifier"],
        seed=3, **kw,
    )  # fmt: skip
    return model, base, h


def perturbed_run(tmp_path, variant="lora", links=1, **kw):
    """A genbound run of the MLP (fc1, fc2 adapted with s = alpha / r = 2, classifier as
    head), its trained tensors moved by seeded noise in each link; returns (checkpoint, the
    moves, the ends): per factor parameter each link's end - start and end value (float64);
    for the head, end - start over the run."""
    model, base, h = applied(tmp_path, variant, **kw)
    gen = torch.Generator().manual_seed(5)
    head_start = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n}
    moves: dict[str, list[torch.Tensor]] = {}
    ends: dict[str, list[torch.Tensor]] = {}
    for link in range(links):
        if link:
            h.chain_step()
        params = h.named_trainable_parameters()
        start = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for p in params.values():
                p.add_(SCALE * torch.randn(p.shape, generator=gen))
        for n, p in params.items():
            if "classifier" not in n:
                moves.setdefault(n, []).append(p.detach().double() - start[n].double())
                ends.setdefault(n, []).append(p.detach().double().clone())
    params = dict(model.named_parameters())
    for n, s in head_start.items():
        moves[n] = [params[n].detach().double() - s.double()]
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=N))
    return ckpt, moves, ends


def trained_run(tmp_path, variant="lora", **kw):
    """The MLP run trained 10 epochs on toy_task(N) (near a minimum: q > 0), saved."""
    _, base, h = applied(tmp_path, variant, **kw)
    fit(h, toy_task(N), epochs=10, lr=0.02, batch_size=8, eval_train=False)
    return load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=N))


def objective64(ckpt, x, y) -> Objective:
    """The merged model in float64 on (x, y), batches of 16 and 8."""
    model = load_updates_into(MLP().double(), ckpt).eval()
    batches = [Batch(x[i : i + 16].double(), y[i : i + 16]) for i in range(0, len(y), 16)]
    return Objective(model, batches, cross_entropy_loss, (), "mlp", metric=classification(3))


def loss_in(model, name: str, x, y):
    """The mean cross-entropy as a function of parameter ``name`` (torch.func)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(w):
        out = torch.func.functional_call(model, {**params, name: w}, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    return f, params[name]


# -- distance --------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "links", "kw"), [("lora", 1, {}), ("cola", 2, {"chain": 2})])
def test_distances_are_the_parameters_moves(tmp_path, variant, links, kw):
    ckpt, moves, ends = perturbed_run(tmp_path, variant, links, **kw)
    assert ckpt.initial is not None  # the run recorded each link's A
    d = start_distances(ckpt)
    ref = math.sqrt(
        sum(float(np.sum(m.double().numpy() ** 2)) for ms in moves.values() for m in ms)
    )
    assert d.trained == pytest.approx(ref, rel=1e-12)
    assert d.unknown_tensors == [] and d.trained_scalars == d.scalars == ckpt.num_trainable
    starts = {t.name: t.start for t in d.tensors}
    assert {starts[f"fc1::link{i}::A" if links > 1 else "fc1::A"] for i in range(links)} == {
        "recorded"
    }
    assert starts["fc2::link0::B" if links > 1 else "fc2::B"] == "zero"
    # merged: dW = s sum over links of B A in numpy, the head's move
    fro = {
        layer: float(
            np.linalg.norm(
                sum(
                    2.0 * b.numpy() @ a.numpy()
                    for b, a in zip(ends[f"{layer}.B"], ends[f"{layer}.A"], strict=True)
                )
            )
        )
        for layer in ("fc1", "fc2")
    }
    fro["classifier"] = float(np.linalg.norm(moves["classifier.weight"][0].numpy()))
    fro["classifier.bias"] = float(np.linalg.norm(moves["classifier.bias"][0].numpy()))
    assert {u.name: u.frobenius for u in d.updates} == pytest.approx(fro, rel=1e-12)
    assert d.merged == pytest.approx(math.sqrt(sum(v * v for v in fro.values())), rel=1e-9)


def test_a_peft_checkpoint_names_the_factors_whose_start_is_unknown(tmp_path):
    from helpers import tiny_bert_lora, tiny_bert_with_tokenizer
    from transformers import BertForSequenceClassification

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, merged = tiny_bert_lora(tmp_path, base_dir, ["query", "value"], [1], n_train=None)
    w0 = BertForSequenceClassification.from_pretrained(base_dir).state_dict()
    d = start_distances(ckpt)
    lora = [n for n in ckpt.updates if "attention" in n]
    assert sorted(d.unknown_tensors) == sorted(f"{n}::{f}" for n in lora for f in ("A", "B"))
    state = merged.state_dict()  # the trained head (modules_to_save) relative to the base's
    head = [float((state[k].double() - w0[k].double()).square().sum()) for k in state]
    head = [v for k, v in zip(state, head, strict=True) if k.startswith("classifier")]
    assert d.trained == pytest.approx(math.sqrt(sum(head)), rel=1e-6)
    assert d.trained_scalars == sum(w0[k].numel() for k in state if k.startswith("classifier"))
    moved = [float((state[k].double() - w0[k].double()).square().sum()) for k in state if k in w0]
    assert d.merged == pytest.approx(math.sqrt(sum(moved)), rel=1e-5)


def test_a_new_tensor_without_its_initial_value_has_no_known_start(tmp_path):
    updates = {
        "x": {"shape": [4, 10], "link": {"kind": "selector", "B": "B", "indices": "i"}},
        "head": {"shape": [3, 4], "link": {"kind": "dense", "value": "h", "new": True}},
    }
    tensors = {"B": torch.ones(4, 2), "i": torch.tensor([0, 9]), "h": torch.full((3, 4), 2.0)}
    ckpt = load_checkpoint(
        write_run(tmp_path / "run", {"variant": "cla", "updates": updates}, tensors)
    )
    d = start_distances(ckpt)
    assert d.unknown_tensors == ["head::delta"] and d.unknown_updates == ["head"]
    assert d.trained == pytest.approx(math.sqrt(8.0))  # B = ones(4, 2), started at zero
    assert d.trained_scalars == 8 and d.scalars == 20


def test_a_subspace_run_moves_its_z_from_zero(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, "lora", rank=2, alpha=4.0, targets=["fc1"], seed=1, subspace=12)
    with torch.no_grad():
        for p in h.trainable_parameters():
            p.add_(torch.linspace(-1, 1, p.numel()).reshape(p.shape))
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=N))
    d = start_distances(ckpt)
    z = ckpt.subspace.z[0].double()
    assert [t.start for t in d.tensors] == ["zero"]
    assert d.trained == pytest.approx(float(z.norm()), rel=1e-12)


# -- hessian distance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "kw", "trained"),
    [("lora", {}, True), ("cola", {"chain": 2}, True), ("lora", {}, False)],
)
def test_q_is_dW_H_dW_of_the_dense_hessian(tmp_path, variant, kw, trained):
    """q_i against torch.func.hessian in the flattened merged weight (a chain's dW lies
    outside the adapter's tangent space: the whole weight's Hessian still). Trained runs
    have q > 0; random factors (not at a minimum) q < 0, counted as 0."""
    if trained:
        ckpt = trained_run(tmp_path, variant, **kw)
    else:
        ckpt, _, _ = perturbed_run(tmp_path, variant, **kw)
    x, y = toy_task(N)
    obj = objective64(ckpt, x, y)
    res = hessian_distance(obj, ckpt, n_train=1000)
    assert [x.name for x in res.layers] == ["fc1", "fc2"]
    assert [n for n, _ in res.skipped_updates] == ["classifier", "classifier.bias"]
    per_example = []
    for layer in res.layers:
        f, w = loss_in(obj.model, layer.parameter, x.double(), y)
        v = ckpt.updates[layer.name].delta(torch.float64).reshape(-1)
        hess = torch.func.hessian(lambda flat, f=f, w=w: f(flat.reshape(w.shape)))(w.reshape(-1))
        assert layer.q == pytest.approx(float(v @ hess @ v), rel=1e-9, abs=1e-13)
        # each example's second derivative along v, by forward-over-reverse
        c = []
        for e in range(N):
            fe, _ = loss_in(obj.model, layer.parameter, x[e : e + 1].double(), y[e : e + 1])
            _, jv = torch.func.jvp(torch.func.grad(fe), (w,), (v.reshape(w.shape),))
            c.append(float((jv.reshape(-1) * v).sum()))
        c = np.array(c)
        assert layer.q == pytest.approx(c.mean(), rel=1e-9, abs=1e-13)
        assert layer.stderr == pytest.approx(c.std(ddof=1) / math.sqrt(N), rel=1e-9)
        assert layer.rayleigh == pytest.approx(layer.q / float(v.square().sum()), rel=1e-12)
        per_example.append(c)
    q = np.array([x.q for x in res.layers])
    assert (q > 0).all() if trained else (q < 0).all()
    assert res.distance == pytest.approx(float(np.sqrt(np.clip(q, 0, None)).sum()), rel=1e-12)
    assert res.negative_layers == int((q < 0).sum())
    assert res.bound == pytest.approx(res.distance / math.sqrt(1000), rel=1e-12)
    g = np.where(q > 0, 0.5 / np.sqrt(np.abs(q)), 0.0)  # delta method over the examples
    cov = np.cov(np.stack(per_example), ddof=1) / N
    assert res.distance_stderr == pytest.approx(math.sqrt(g @ cov @ g), rel=1e-9)


def test_q_agrees_with_the_merged_operator_where_dW_is_in_its_tangent_space(tmp_path):
    """LoRA's dW = s B A lies in T = {s (dB A + B dA)}: the report's merged-dW operator,
    on the adapter-layer copy, gives the same dW^T H dW."""
    ckpt, _, _ = perturbed_run(tmp_path)
    x, y = toy_task(N)
    obj = objective64(ckpt, x, y)
    params = ("fc1.weight", "fc2.weight")
    adapted, _ = adapter_objective(Objective(obj.model, obj.batches, obj.loss, params, "mlp"), ckpt)
    res = hessian_distance(obj, ckpt)
    with MergedHessianOperator(adapted) as op:
        for i, layer in enumerate(res.layers):
            v = torch.zeros(op.size, dtype=torch.float64)
            start = sum(lay.n * lay.m for lay in op.layers[:i])
            dw = ckpt.updates[layer.name].delta(torch.float64).reshape(-1)
            v[start : start + dw.numel()] = dw
            assert op.layers[i].name == layer.name
            assert layer.q == pytest.approx(float(v @ op.matvec(v)), rel=1e-8)


def test_the_model_is_left_as_found(tmp_path):
    ckpt, _, _ = perturbed_run(tmp_path)
    x, y = toy_task(N)
    obj = objective64(ckpt, x, y)
    model = obj.model.train()
    model.fc2.weight.requires_grad_(False)
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    hessian_distance(obj, ckpt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert not model.fc2.weight.requires_grad and model.fc1.weight.requires_grad
    assert torch.equal(model.fc1.weight.grad, torch.ones_like(model.fc1.weight))
    assert model.fc2.weight.grad is None
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_no_updated_linear_weight_is_an_error_naming_why(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, "head", head=["classifier"], seed=3)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=N))
    x, y = toy_task(N)
    with pytest.raises(GenboundError, match="classifier: new to the model"):
        hessian_distance(objective64(ckpt, x, y), ckpt)


# -- the report --------------------------------------------------------------------------------


def test_report_json_and_md_carry_both_measures(tmp_path):
    ckpt = trained_run(tmp_path)
    x, y = toy_task(N)
    models = []

    class Task:
        n_train, num_labels, description = N, 3, "toy"
        metric = classification(3)

        def objectives(self, checkpoint):
            obj = objective64(checkpoint, x, y)
            models.append(obj.model)
            return obj, obj

    opts = ReportOptions(parts=("distance", "hessian_distance"), curvature_examples=12)
    m = measure_checkpoint(ckpt, task=Task(), options=opts)
    assert not m.skipped, m.skipped
    dist, hd = m.results["distance"], m.results["hessian_distance"]
    out = write_report(ckpt, tmp_path / "report", m)
    doc = json.loads((out / "report.json").read_text())
    got = {n: s.read(doc) for n, s in sweep_scalars()}
    assert got["dist_trained"] == dist.trained and got["dist_merged"] == dist.merged
    assert got["hessian_distance"] == hd.distance and got["hessian_distance_bound"] == hd.bound
    assert hd.examples == 12 and doc["hessian_distance"]["sample"]["examples"] == 12
    assert hd.distance > 0 and hd.bound == pytest.approx(hd.distance / math.sqrt(N), rel=1e-12)
    assert [x["q"] for x in doc["hessian_distance"]["layers"]] == [x.q for x in hd.layers]
    assert doc["hessian_distance"]["skipped_updates"][0]["name"] == "classifier"
    assert doc["distance"]["trained"]["unknown_start"] == []
    assert [u["frobenius"] for u in doc["distance"]["merged"]["updates"]] == [
        u.frobenius for u in dist.updates
    ]
    # on the sample of 12: the same q as computed directly on those examples
    sub = sample_objective(objective64(ckpt, x, y), 12, seed=opts.seed)[0]
    direct = hessian_distance(sub, ckpt, n_train=N)
    assert [x.q for x in hd.layers] == pytest.approx([x.q for x in direct.layers], rel=1e-12)
    md = (out / "report.md").read_text()
    assert "## Distance from the start" in md and "## Hessian distance" in md
    assert f"over all {ckpt.num_trainable:,} trained scalars" in md
    assert "not a certified bound" in md
    model = models[0]  # the report's model is left as found: eval, as built, no hooks
    assert not model.training and all(not m._forward_hooks for m in model.modules())
    fresh = objective64(ckpt, x, y).model
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    # without data: distance only, hessian_distance skipped
    free = measure_checkpoint(ckpt, options=opts)
    assert free.results["distance"].trained == dist.trained
    assert "hessian_distance" in free.skipped
