"""genbound.train.fit: per-example evaluation, schedule, LoRA+ groups, chain resets, seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_adapters import MLP

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.train import evaluate, fit, linear_schedule


def data(n: int = 90, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def test_fit_learns_and_records_history(tmp_path):
    x, y = data()
    h = ga.apply(MLP(), "lora", rank=4, targets=["fc1", "fc2"], seed=0)
    res = fit(h, (x[:60], y[:60]), (x[60:], y[60:]), epochs=4, lr=3e-2, batch_size=16)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    assert res.steps == 4 * 4
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert not h.model.training
    run = h.save(tmp_path / "run", metrics=res.metrics(), n_train=60)
    ckpt = load_checkpoint(run)
    assert ckpt.metrics["train_loss"] == pytest.approx(res.train_loss)
    assert len(ckpt.metrics["history"]) == 4


def test_evaluate_is_a_mean_over_examples():
    x, y = data(37)
    model = MLP().eval()
    loss, acc = evaluate(model, (x, y), batch_size=8)  # last batch has 5 examples
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert acc == pytest.approx(float((logits.argmax(-1) == y).float().mean()))


def test_seed_reproduces_and_rng_restored():
    x, y = data()
    handles = [ga.apply(MLP(), "random_cla", rank=3, targets=["fc1"], seed=4) for _ in range(2)]
    state = torch.random.get_rng_state()  # MLP() seeds the global RNG; fit must not move it
    for h in handles:
        fit(h, (x, y), None, epochs=2, lr=1e-2, batch_size=16, seed=9)
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b = handles
    assert torch.equal(a.delta_weights()["fc1"], b.delta_weights()["fc1"])
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)


def test_lora_plus_groups_and_schedule():
    h = ga.apply(MLP(), "lora_plus", rank=2, targets=["fc1"], lr_ratio=8)
    groups = h.param_groups(1e-3)
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(h.layers["fc1"].B)] == pytest.approx(8e-3)
    assert lrs[id(h.layers["fc1"].A)] == pytest.approx(1e-3)
    assert lrs[id(h.model.classifier.weight)] == pytest.approx(1e-3)
    mult = linear_schedule(10, 2)
    assert [round(mult(s), 3) for s in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("method", ["cola", "rac", "c3la", "random_c3la"])
def test_chain_resets_during_fit(method, tmp_path):
    x, y = data()
    h = ga.apply(MLP(), method, rank=2, targets=["fc1", "fc2"], chain=3, seed=0)
    res = fit(h, (x, y), None, epochs=3, lr=1e-2, batch_size=30)
    assert res.chain_steps == [3, 6] and h.links_done == 2
    ckpt = load_checkpoint(h.save(tmp_path / "run"))
    assert all(len(ckpt.updates[n].links) == 3 for n in ("fc1", "fc2"))
    h2 = ga.apply(MLP(), method, rank=2, targets=["fc1"], chain=3, seed=0)
    res = fit(h2, (x, y), None, epochs=3, lr=1e-2, batch_size=30, chain_every_epochs=1)
    assert res.chain_steps == [3, 6]


def test_chain_reset_rebuilds_optimizer_state():
    x, y = data()
    h = ga.apply(MLP(), "cola", rank=2, targets=["fc1"], chain=2, seed=0)
    seen = []
    orig = h.chain_step

    def spy():
        params = orig()
        seen.extend(params)
        return params

    h.chain_step = spy
    fit(h, (x, y), None, epochs=2, lr=1e-2, batch_size=45)
    assert {id(p) for p in seen} == {id(h.layers["fc1"].A), id(h.layers["fc1"].B)}


def test_fit_bad_arguments():
    x, y = data()
    h = ga.apply(MLP(), "cola", rank=2, targets=["fc1"], chain=3)
    with pytest.raises(GenboundError, match="expected the handle's k = 3"):
        fit(h, (x, y), None, epochs=4, lr=1e-2, chain_every_epochs=1)
    with pytest.raises(GenboundError, match="epochs >= 1"):
        fit(h, (x, y), None, epochs=0, lr=1e-2)
    with pytest.raises(GenboundError, match="Dataset"):
        fit(h, [1, 2], None, epochs=1, lr=1e-2)
    plain = ga.apply(MLP(), "lora", rank=2, targets=["fc1"])
    with pytest.raises(GenboundError, match="chained"):
        fit(plain, (x, y), None, epochs=1, lr=1e-2, chain_every_epochs=1)


def test_fit_plain_model_and_trajectory(tmp_path):
    x, y = data()
    model = MLP()
    res = fit(model, (x, y), (x, y), epochs=1, lr=1e-2, batch_size=32)
    assert res.test_acc is not None
    h = ga.apply(MLP(), "asym", rank=2, targets=["fc1"])
    fit(h, (x, y), None, epochs=1, lr=1e-2, batch_size=32, trajectory_every=2)
    assert [s for s, _ in h.snapshots] == [0, 2, 3]
    ckpt = load_checkpoint(h.save(tmp_path / "run"))
    assert ckpt.trajectory["steps"] == [0, 2, 3]


def test_fit_hugging_face_model_with_masks():
    from conftest import tiny_bert

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (24, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0
    y = (ids[:, 0] % 3).long()
    h = ga.apply(tiny_bert(), "cla", rank=4, targets=["query", "value"], seed=0)
    res = fit(h, (ids, mask, y), (ids, mask, y), epochs=2, lr=1e-2, batch_size=8)
    assert len(res.history) == 2 and res.test_acc is not None
