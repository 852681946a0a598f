"""Subspace runs: theta = theta_0 + P z with z the only trained parameter, saved as z and
rebuilt bit-exactly; bad arguments fail clearly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_bert
from safetensors import safe_open
from test_adapters import MLP, save_base

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.adapters.projection import KronProjection
from genbound.adapters.subspace import projection_seed
from genbound.callbacks import live_checkpoint
from genbound.train import SUBSPACE_LR, fit

#: every variant subspace training supports (all trainable ones but fft and lora_plus).
METHODS = [n for n, v in ga.variants().items() if v.trainable and n != "fft" and v.lr_ratio is None]
D_SUB = 20


def run(method: str, *, d: int = D_SUB, seed: int = 3, steps: int = 3):
    model = MLP()
    handle = ga.apply(model, method, rank=2, targets=["fc1", "fc2"], seed=seed, subspace=d)
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(handle.param_groups(lr=1e-2))
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    return model, handle, x


def plain(method: str, seed: int = 3):
    """The same run without a subspace: its trainable tensors by name."""
    model = MLP()
    h = ga.apply(model, method, rank=2, targets=["fc1", "fc2"], seed=seed)
    return model, h


@pytest.mark.parametrize("method", METHODS)
def test_only_z_trains_and_theta_is_theta0_plus_Pz(method):
    model, handle, _ = run(method)
    _, ref = plain(method)
    names = list(ref.named_trainable_parameters())
    theta0 = torch.cat([p.detach().double().reshape(-1) for p in ref.trainable_parameters()])
    D = theta0.numel()
    assert handle.num_trainable == D_SUB and handle.num_trainable_by_formula() == D_SUB
    assert list(handle.named_trainable_parameters()) == ["subspace.z"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    # the state dict keeps every name
    assert set(names) <= set(model.state_dict())
    z = handle.subspace.z.detach().double()
    assert z.abs().sum() > 0
    P = KronProjection(D, D_SUB, projection_seed(3)).dense()
    theta = theta0 + P @ z
    handle.subspace.refresh()
    got = torch.cat([model.get_buffer(n).double().reshape(-1) for n in names])
    dtype_eps = 1e-6  # float32 tensors: theta is cast from float64
    assert torch.allclose(got, theta, rtol=0, atol=dtype_eps)


@pytest.mark.parametrize("method", ["lora", "cla", "head"])
def test_gradient_of_z_is_P_transpose_of_the_tensors_gradient(method):
    model, handle, x = run(method, steps=0)
    _, ref = plain(method)
    with torch.no_grad():  # move off theta_0 (B = 0 gives A no gradient)
        handle.subspace.z.copy_(torch.linspace(-0.5, 0.5, D_SUB))
    model(x).square().sum().backward()
    gz = handle.subspace.z.grad.double()
    # reference: the plain run at the same tensors, its gradient projected by P^T
    handle.subspace.refresh()
    with torch.no_grad():
        for n, p in ref.named_trainable_parameters().items():
            p.copy_(model.get_buffer(n))
    ref.model(x).square().sum().backward()
    g = torch.cat([p.grad.double().reshape(-1) for p in ref.trainable_parameters()])
    P = KronProjection(g.numel(), D_SUB, projection_seed(3))
    assert torch.allclose(gz, P.rmatvec(g), rtol=1e-4, atol=1e-6)


def _link(update):
    """The one link of an update (a chain of one link for chained variants)."""
    return update.links[-1] if hasattr(update, "links") else update


@pytest.mark.parametrize("method", METHODS)
def test_saved_run_stores_z_and_rebuilds_bit_exact_factors(tmp_path, method):
    model, handle, _ = run(method)
    path = handle.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path))
    man = json.loads((path / "genbound.json").read_text())
    sub = man["subspace"]
    assert sub["d"] == D_SUB and sub["kind"] == "kron" and sub["seed"] == projection_seed(3)
    (link,) = sub["links"]
    slots = handle.subspace.slots
    assert [t["name"] for t in sub["tensors"]] == [s.name for s in slots]
    stored = safe_open(path / "updates.safetensors", "pt").keys()
    assert not set(link["keys"]) & set(stored)  # the expanded tensors are not stored
    assert set(link["initial"]) | {link["z"]} <= set(stored)
    ckpt = load_checkpoint(path)
    assert ckpt.num_trainable == D_SUB and ckpt.num_trainable_by_formula() == D_SUB
    assert ckpt.subspace.d == D_SUB
    handle.subspace.refresh()
    compared = 0
    for path_, layer in handle.layers.items():
        link = _link(ckpt.updates[path_])
        for name in layer.trained:
            assert torch.equal(getattr(link, name), getattr(layer, name)), (path_, name)
            compared += 1
    for d in handle.dense:
        value = ckpt.updates[d.name].value()
        assert torch.equal(value, model.get_buffer(d.param)), d.name
        compared += 1
    assert compared == len(handle.subspace.slots)


@pytest.mark.parametrize("method", ["lora", "c3la", "head", "vera"])
def test_reloaded_model_outputs_equal_the_live_handle(tmp_path, method):
    model, handle, x = run(method)
    base_model = MLP()
    base = save_base(base_model, tmp_path)
    ckpt = load_checkpoint(handle.save(tmp_path / "run", base_model=base))
    with torch.no_grad():
        live = model(x)
        w = handle.merged_weights()
        rebuilt = MLP()
        sd = rebuilt.state_dict()
        for u in ckpt.updates.values():
            delta = u.delta().to(torch.float32)
            sd[u.param] = sd[u.param] + (delta.T if u.transposed else delta).reshape(
                sd[u.param].shape
            )
        rebuilt.load_state_dict(sd)
        for k, v in w.items():  # W0 + dW in float32: within rounding of the add
            assert torch.allclose(rebuilt.state_dict()[k], v, rtol=0, atol=1e-6), k
        assert torch.allclose(rebuilt(x), live, rtol=0, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(GenboundError, match="d = 10000 is larger than the run's D = 243"):
        ga.apply(MLP(), "lora", rank=2, targets=["fc1", "fc2"], seed=0, subspace=10000)
    with pytest.raises(GenboundError, match="positive integer"):
        ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0, subspace=0)
    with pytest.raises(GenboundError, match="found 'fft'"):
        ga.apply(MLP(), "fft", targets=["fc1"], seed=0, subspace=5)
    with pytest.raises(GenboundError, match="needs seed=s"):
        ga.apply(MLP(), "lora", rank=2, targets=["fc1"], subspace=5)
    with pytest.raises(GenboundError, match="learning-rate ratio"):
        ga.apply(MLP(), "lora_plus", rank=2, targets=["fc1"], seed=0, subspace=5)
    with pytest.raises(GenboundError, match="can be analysed but not trained"):
        ga.apply(MLP(), "dora", rank=2, targets=["fc1"], seed=0, subspace=5)
    model = MLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GenboundError):
        ga.apply(model, "lora", rank=2, targets=["fc1"], seed=0, subspace=10**6)
    assert all(p.requires_grad for p in model.parameters())  # model untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def toy_task(n: int = 256):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=gen)
    y = (x @ torch.randn(32, 3, generator=gen)).argmax(1)
    return x, y


@pytest.mark.parametrize("method,chain", [("lora", 1), ("c3la", 2), ("head", 1)])
def test_fit_trains_z_at_the_default_learning_rate(method, chain):
    x, y = toy_task()
    model = MLP()
    before = (model(x).argmax(1) == y).float().mean().item()
    kw = {"chain": chain} if chain > 1 else {}
    h = ga.apply(model, method, rank=4, targets=["fc1", "fc2"], seed=1, subspace=30, **kw)
    result = fit(h, (x, y), epochs=6, lr=SUBSPACE_LR, batch_size=32)
    assert len(result.chain_steps) == chain - 1
    assert result.train_acc > before + 0.1
    assert h.num_trainable == 30
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


def test_chain_step_starts_a_new_link_subspace():
    model = MLP()
    h = ga.apply(model, "c3la", rank=2, targets=["fc1", "fc2"], seed=1, subspace=10, chain=2)
    x, _ = toy_task(16)
    with torch.no_grad():
        h.subspace.z.fill_(0.3)
        before = model(x)
    reset = h.chain_step()
    assert reset == [h.subspace.z] and h.subspace.z.abs().sum() == 0
    assert h.subspace.link == 1 and len(h.subspace.history) == 1
    with torch.no_grad():
        assert torch.allclose(model(x), before, rtol=0, atol=1e-5)  # the merge keeps f


def test_live_checkpoint_of_a_subspace_handle(tmp_path):
    model, handle, x = run("lora")
    base = save_base(MLP(), tmp_path)
    with torch.no_grad():
        live = model(x)
    with live_checkpoint(handle, base=base, n_train=7) as ckpt:
        assert ckpt.num_trainable == D_SUB and ckpt.subspace.d == D_SUB
        for name, layer in handle.layers.items():
            assert torch.equal(ckpt.updates[name].B, layer.B)
    with torch.no_grad():
        assert torch.equal(model(x), live)


@pytest.mark.parametrize("method", ["cola", "rac", "c3la", "random_c3la"])
def test_chained_run_saves_one_z_per_link_and_rebuilds_every_link(tmp_path, method):
    x, y = toy_task(64)
    model = MLP()
    h = ga.apply(model, method, rank=2, targets=["fc1", "fc2"], seed=2, subspace=12, chain=3)
    fit(h, (x, y), epochs=3, lr=SUBSPACE_LR, batch_size=16, eval_train=False)
    assert h.links_done == 2
    path = h.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path))
    man = json.loads((path / "genbound.json").read_text())
    links = man["subspace"]["links"]
    assert len(links) == 3
    heads = [i for i, s in enumerate(h.subspace.slots) if s.name.startswith("classifier")]
    for i, link in enumerate(links):  # the head is stored once: its final value
        assert all((link["keys"][j] is None) == (i < 2) for j in heads)
        assert all((link["initial"][j] is None) == (i > 0) for j in heads)
    ckpt = load_checkpoint(path)
    # a checkpoint codes every link's z: d per link
    assert ckpt.num_trainable == 3 * 12 and ckpt.subspace.links == 3 and ckpt.subspace.d == 12
    h.subspace.refresh()
    for name, layer in h.layers.items():
        saved = ckpt.updates[name].links
        assert len(saved) == 3
        for tensors, link in zip([*layer.finished, layer.link_tensors()], saved, strict=True):
            for factor in layer.trained:
                assert torch.equal(getattr(link, factor), tensors[factor]), (name, factor)
        # dW: the checkpoint sums links in its dtype, the layer in float64
        assert torch.allclose(ckpt.updates[name].delta().double(), layer.delta(), atol=1e-6)
    for d in h.dense:
        assert torch.equal(ckpt.updates[d.name].value(), model.get_buffer(d.param))


def test_merge_folds_the_expansion_and_unwraps(tmp_path):
    model, handle, x = run("lora")
    with torch.no_grad():
        live = model(x)
    expected = handle.merged_weights()
    merged = handle.merge()
    assert type(merged.fc1) is torch.nn.Linear
    for name, value in expected.items():
        assert torch.equal(merged.state_dict()[name], value), name
    assert isinstance(merged.classifier.weight, torch.nn.Parameter)
    with torch.no_grad():
        assert torch.allclose(merged(x), live, rtol=0, atol=1e-5)


def test_trajectory_snapshots_record_z(tmp_path):
    x, y = toy_task(64)
    model = MLP()
    h = ga.apply(model, "lora", rank=2, targets=["fc1"], seed=1, subspace=8)
    fit(h, (x, y), epochs=1, lr=SUBSPACE_LR, batch_size=16, trajectory_every=2, eval_train=False)
    path = h.save(tmp_path / "run")
    man = json.loads((path / "genbound.json").read_text())
    assert man["trajectory"]["params"] == ["subspace.z"]
    with safe_open(path / "trajectory.safetensors", "pt") as f:
        last = f.get_tensor(f"{len(man['trajectory']['steps']) - 1}/subspace.z")
    assert torch.equal(last, h.subspace.z.detach())


def test_a_run_folder_with_a_wrong_z_fails_clearly(tmp_path):
    _, handle, _ = run("lora")
    path = handle.save(tmp_path / "run")
    man = json.loads((path / "genbound.json").read_text())
    man["subspace"]["d"] = D_SUB + 1
    (path / "genbound.json").write_text(json.dumps(man))
    with pytest.raises(GenboundError, match=r"subspace\.links\[0\]\.z"):
        load_checkpoint(path)


def test_hugging_face_model_subspace_run_reloads(tmp_path):
    model = tiny_bert()
    base = tmp_path / "base"
    model.save_pretrained(base)
    h = ga.apply(model, "c3la", rank=2, targets=["query", "value"], seed=5, subspace=40, chain=2)
    ids = torch.randint(1, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(h.param_groups(lr=SUBSPACE_LR))
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids).logits.square().sum().backward()
        opt.step()
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base))
    assert ckpt.num_trainable == 40 and ckpt.subspace.links == 1 and h.num_trainable == 40
    h.subspace.refresh()
    for name, layer in h.layers.items():
        assert torch.equal(ckpt.updates[name].links[-1].B, layer.B)


def test_a_copied_model_is_an_independent_subspace_model():
    model, handle, x = run("lora")
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(x), model(x))
        handle.subspace.z.add_(1.0)
        assert not torch.equal(copied(x), model(x))


def test_a_forward_that_enters_below_the_model_expands_once_and_trains_z():
    """A pass through the layers themselves (as a cached-prefix suffix does) gets the same
    gradient as model(x); repeated passes without a step each backpropagate."""
    model, handle, x = run("lora", steps=1)

    def by_layers(inp):
        return model.classifier(torch.tanh(model.fc2(torch.tanh(model.fc1(inp)))))

    grads = []
    for f in (model, by_layers, by_layers):
        handle.subspace.z.grad = None
        f(x).square().sum().backward()
        grads.append(handle.subspace.z.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], grads[0], rtol=1e-6, atol=0) and torch.equal(grads[1], grads[2])
    with torch.no_grad():
        handle.subspace.z.add_(0.5)  # a step: the next pass sees the new z
        moved = by_layers(x)
    handle.subspace.refresh()
    with torch.no_grad():
        assert torch.equal(moved, model(x))
    copy.deepcopy(model)  # nothing left attached to a graph
