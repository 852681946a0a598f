"""genbound.adapters.apply: the right parameters train, dW has its structure, chains merge
exactly, seeds reproduce, saved runs reload with the same dW, bad arguments fail clearly."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2
from helpers import assert_rel_close
from safetensors.torch import save_file
from torch import nn

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.checkpoint import ChainUpdate

#: The variants apply trains, as the registry says.
TRAINABLE = [name for name, v in ga.variants().items() if v.trainable]
CHAINED = {"cola", "rac", "c3la", "random_c3la"}
R, K = 2, 3


class MLP(nn.Module):
    """fc1: 32 -> 24, fc2: 24 -> 16, classifier: 16 -> 3 (the head)."""

    def __init__(self, m: int = 32, h1: int = 24, h2: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2, self.classifier = nn.Linear(m, h1), nn.Linear(h1, h2), nn.Linear(h2, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def save_base(model: nn.Module, path) -> str:
    file = path / "base.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, file)
    return str(file)


def kwargs(method: str) -> dict:
    return {"chain": K} if method in CHAINED else {}


def grad_count(model: nn.Module, x: torch.Tensor) -> tuple[int, set[str]]:
    """Scalars of the parameters that get a nonzero gradient from one backward."""
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    got = {
        n: p.numel()
        for n, p in model.named_parameters()
        if p.grad is not None and bool(p.grad.abs().sum() > 0)
    }
    return sum(got.values()), set(got)


def sgd_step(handle, lr: float = 0.1) -> None:
    with torch.no_grad():
        for p in handle.trainable_parameters():
            if p.grad is not None:
                p -= lr * p.grad


def train_all_links(handle, x: torch.Tensor) -> int:
    """Train every link (one step, then count gradients); returns the scalars that trained.

    B = 0 at the start of a link, so A's gradient is zero on the first backward: count on
    the second one, after one step. Dense tensors (the head) count once for the run.
    """
    counted = 0
    dense = {d.param for d in handle.dense}
    for link in range(handle.chain):
        grad_count(handle.model, x)
        sgd_step(handle)
        _, names = grad_count(handle.model, x)
        assert names == set(handle.named_trainable_parameters())
        params = dict(handle.model.named_parameters())
        counted += sum(params[n].numel() for n in names if link == 0 or n not in dense)
        sgd_step(handle)
        if link < handle.chain - 1:
            handle.chain_step()
    return counted


@pytest.mark.parametrize("method", TRAINABLE)
def test_trainable_count_matches_formula_and_reload(method, tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    h = ga.apply(model, method, rank=R, targets=["fc1", "fc2"], seed=3, **kwargs(method))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if method != "fft":
        assert all(not p.requires_grad for n, p in model.named_parameters() if ".base." in n)
    assert frozen or method == "fft"
    counted = train_all_links(h, torch.randn(7, 32))

    run = h.save(tmp_path / "run", base_model=base, n_train=7)
    ckpt = load_checkpoint(run)
    assert ckpt.variant == method
    assert counted == ckpt.num_trainable == ckpt.num_trainable_by_formula()
    assert counted == h.num_trainable_by_formula()
    # head counted in D
    assert counted >= 16 * 3 + 3
    # dW relative to the ORIGINAL W0, and merged weights = W0 + dW
    merged = h.merged_weights()
    for name, u in ckpt.updates.items():
        if u.is_new:
            continue
        assert_rel_close(
            original[u.param].double() + u.delta(stored=True).double(), merged[u.param], 1e-6, name
        )
    for name, dw in h.delta_weights().items():
        assert_rel_close(ckpt.updates[name].delta(torch.float64), dw, 1e-12, name)


def test_formula_cap_when_links_exceed_the_layer(tmp_path):
    """CoLA with k r (m + n) > m n: the formula caps at m n (dW has only m n entries, and
    merged weights are stored at q bits), while the stored factors hold more scalars."""
    model = MLP(m=6, h1=5, h2=4)
    h = ga.apply(model, "cola", rank=2, targets=["fc1"], chain=3, seed=0)
    counted = train_all_links(h, torch.randn(5, 6))
    ckpt = load_checkpoint(h.save(tmp_path / "run"))
    head = 4 * 3 + 3
    assert counted == ckpt.num_trainable == 3 * 2 * (6 + 5) + head
    assert ckpt.num_trainable_by_formula() == 6 * 5 + head == h.num_trainable_by_formula()


def nonzero_columns(dw: torch.Tensor) -> set[int]:
    return set(torch.nonzero(dw.abs().sum(0) > 0).flatten().tolist())


@pytest.mark.parametrize("method", ["cla", "random_cla", "paca", "c3la", "random_c3la"])
def test_selector_structure(method):
    model = MLP()
    h = ga.apply(model, method, rank=R, targets=["fc1"], seed=5, **kwargs(method))
    train_all_links(h, torch.randn(9, 32))
    dw = h.delta_weights()["fc1"]
    cols = nonzero_columns(dw)
    layer = h.layers["fc1"]
    k = K if method in CHAINED else 1
    assert len(cols) == k * R
    if method == "cla":
        assert cols == set(range(R))
    if method == "c3la":
        assert cols == set(range(K * R))
    if method in ("random_cla", "paca"):
        assert cols == set(layer.indices.tolist())
    if method == "random_c3la":
        windows = {c // R for c in cols}
        assert len(windows) == K and all({w * R + i for i in range(R)} <= cols for w in windows)
    assert int(torch.linalg.matrix_rank(dw)) <= k * R


def test_lowrank_structure():
    for method, k in (("lora", 1), ("asym", 1), ("cola", K), ("rac", K)):
        h = ga.apply(MLP(), method, rank=R, targets=["fc1"], seed=1, chain=k)
        a0 = h.layers["fc1"].A.detach().clone()
        train_all_links(h, torch.randn(9, 32))
        assert int(torch.linalg.matrix_rank(h.delta_weights()["fc1"])) == k * R
        if method == "asym":
            assert torch.equal(h.layers["fc1"].A, a0)  # A is frozen


@pytest.mark.parametrize("method", sorted(CHAINED))
def test_chain_merge_preserves_function(method):
    model = MLP()
    original = model.fc1.weight.detach().clone()
    h = ga.apply(model, method, rank=R, targets=["fc1", "fc2"], chain=K, seed=2)
    x = torch.randn(11, 32)
    for _ in range(K - 1):
        grad_count(model, x)
        sgd_step(h, 0.5)
        grad_count(model, x)
        sgd_step(h, 0.5)
        with torch.no_grad():
            before = model(x)
            h.chain_step()
            after = model(x)
        assert (after - before).abs().max() <= 1e-6 * max(1.0, before.abs().max())
        # the live base weight holds the merged links; dW stays relative to the original
        live = model.fc1.base.weight.detach().double()
        assert_rel_close(live - original.double(), h.delta_weights()["fc1"], 1e-6)
    with pytest.raises(GenboundError, match="chain"):
        h.chain_step()


def test_seeds_reproduce():
    def run(method, seed):
        h = ga.apply(MLP(), method, rank=R, targets=["fc1", "fc2"], seed=seed, **kwargs(method))
        train_all_links(h, torch.randn(9, 32, generator=torch.Generator().manual_seed(0)))
        return h

    for method in ("lora", "asym", "rac", "random_cla", "random_c3la", "paca"):
        a, b = run(method, 7), run(method, 7)
        for name in a.layers:
            assert torch.equal(a.delta_weights()[name], b.delta_weights()[name]), method
    a, b = run("random_cla", 7), run("random_cla", 8)
    assert not torch.equal(a.layers["fc1"].indices, b.layers["fc1"].indices)
    a, b = run("random_c3la", 7), run("random_c3la", 8)
    assert any(
        not torch.equal(x["indices"], y["indices"])
        for x, y in zip(a.layers["fc1"].finished, b.layers["fc1"].finished, strict=True)
    )


def test_cla_forward_is_a_gather_and_saves_indices(tmp_path):
    h = ga.apply(MLP(), "random_cla", rank=4, targets=["fc1"], alpha=8, seed=0)
    layer = h.layers["fc1"]
    assert not any(t.ndim == 2 and t.shape == (4, 32) for t in layer.buffers())
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 32)
    e = torch.zeros(4, 32)
    e[torch.arange(4), layer.indices] = 1
    expected = layer.base(x) + 2.0 * (x @ e.T) @ layer.B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    ckpt = load_checkpoint(h.save(tmp_path / "run"))
    u = ckpt.updates["fc1"]
    assert u.kind == "selector" and torch.equal(u.indices, layer.indices) and u.scale == 2.0
    assert ckpt.hparams.selector_seed == 0


def test_chain_saved_as_links(tmp_path):
    h = ga.apply(MLP(), "c3la", rank=R, targets=["fc1"], chain=K, seed=0)
    train_all_links(h, torch.randn(9, 32))
    ckpt = load_checkpoint(h.save(tmp_path / "run"))
    u = ckpt.updates["fc1"]
    assert isinstance(u, ChainUpdate) and len(u.links) == K
    assert [link.indices.tolist() for link in u.links] == [[0, 1], [2, 3], [4, 5]]
    assert ckpt.hparams.chain == K
    assert ckpt.updates["classifier"].is_new


def test_fft_targets_and_whole_model(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, "fft", targets=["fc2"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc2.weight",
        "fc2.bias",
        "classifier.weight",
        "classifier.bias",
    }
    train_all_links(h, torch.randn(5, 32))
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base))
    assert set(ckpt.updates) == {"fc2", "fc2.bias", "classifier", "classifier.bias"}
    assert ckpt.num_trainable == 24 * 16 + 16 + 16 * 3 + 3
    h2 = ga.apply(MLP(), "fft")
    assert h2.num_trainable == sum(p.numel() for p in MLP().parameters())


def test_tiny_bert_lora_and_head(tmp_path):
    model = tiny_bert()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    h = ga.apply(model, "lora", rank=4, alpha=8, targets=["query", "value"], seed=0)
    assert h.heads == ["classifier"] and len(h.layers) == 4
    x = torch.randint(0, 64, (4, 10))
    model.train()
    model(x).logits.sum().backward()
    sgd_step(h)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base_dir))
    assert ckpt.base is not None
    assert ckpt.num_trainable == ckpt.num_trainable_by_formula() == h.num_trainable
    merged = h.merged_weights()
    for name, u in ckpt.updates.items():
        if not u.is_new:
            w0 = ckpt.base.tensor(u.param).double()
            assert_rel_close(w0 + u.delta(stored=True).double(), merged[u.param], 1e-6, name)


def test_gpt2_conv1d_transposed(tmp_path):
    model = tiny_gpt2()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    x = torch.randint(0, 64, (2, 8))
    h = ga.apply(model, "cla", rank=3, targets=["c_attn"], head=(), seed=0)
    assert h.layers["transformer.h.0.attn.c_attn"].transposed
    with torch.no_grad():
        for layer in h.layers.values():
            layer.B.normal_(std=0.1)
        out = model(x).logits
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base_dir))
    u = ckpt.updates["transformer.h.0.attn.c_attn"]
    assert u.transposed and u.shape == (96, 32)
    merged = h.merged_weights()
    assert_rel_close(
        ckpt.base.tensor(u.param).double() + u.delta(stored=True).double(), merged[u.param], 1e-6
    )
    with torch.no_grad():
        assert torch.allclose(h.merge()(x).logits, out, atol=1e-5)


def test_trajectory_saved(tmp_path):
    h = ga.apply(MLP(), "asym", rank=R, targets=["fc1"], seed=0)
    h.snapshot(0)
    train_all_links(h, torch.randn(5, 32))
    h.snapshot(2)
    run = h.save(tmp_path / "run")
    ckpt = load_checkpoint(run)
    assert ckpt.trajectory["steps"] == [0, 2]
    assert "fc1.B" in ckpt.trajectory["params"]
    assert (run / "trajectory.safetensors").exists()


# -- bad arguments -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "kw", "match"),
    [
        ("lora", dict(rank=25, targets=["fc1"]), r"rank 25 is larger than layer 'fc1'"),
        ("cla", dict(rank=33, targets=["fc1"]), r"only m = 32 inputs"),
        ("c3la", dict(rank=8, targets=["fc2"], chain=4), r"k r = 4 x 8 = 32 .* m = 24"),
        ("lora", dict(rank=2, targets=["nothing"]), r"match nn.Linear .* found none"),
        ("lora", dict(rank=2), r"needs targets"),
        ("lora", dict(rank=0, targets=["fc1"]), r"positive integer"),
        ("lora", dict(rank=2, targets=["fc1"], chain=2), r"not chained"),
        ("asym", dict(rank=2, targets=["fc1"], lr_ratio=4), r"lr_ratio"),
        ("dora", dict(rank=2, targets=["fc1"]), r"not trained by genbound"),
        ("nope", dict(rank=2, targets=["fc1"]), r"unknown adapter variant"),
        ("lora", dict(rank=2, targets=["fc1"], head=["missing"]), r"head patterns"),
        ("head", dict(head=()), r"trains only the head"),
    ],
)
def test_bad_arguments_leave_model_untouched(method, kw, match):
    model = MLP()
    before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    with pytest.raises(GenboundError, match=match):
        ga.apply(model, method, **kw)
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    assert isinstance(model.fc1, nn.Linear)


def test_apply_twice_is_refused():
    model = MLP()
    ga.apply(model, "lora", rank=R, targets=["fc1"])
    with pytest.raises(GenboundError, match="without adapters"):
        ga.apply(model, "cla", rank=R, targets=["fc2"])


def test_save_after_merge_and_existing_dir(tmp_path):
    h = ga.apply(MLP(), "lora", rank=R, targets=["fc1"])
    h.save(tmp_path / "run")
    with pytest.raises(GenboundError, match="already exists"):
        h.save(tmp_path / "run")
    h.merge()
    with pytest.raises(GenboundError, match="merged"):
        h.save(tmp_path / "run2")


@pytest.mark.parametrize("conv1d", [False, True])
def test_fused_gather_matches_unfused(conv1d, monkeypatch):
    """The fused base + gather autograd function gives the unfused outputs and gradients."""
    from genbound.adapters.layers import SelectorLayer

    torch.manual_seed(0)
    if conv1d:
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(7, 12).double()
        with torch.no_grad():
            base.weight.normal_()
            base.bias.normal_()
    else:
        base = nn.Linear(12, 7).double()
    layer = SelectorLayer(base, rank=3, scale=1.7, plan=[torch.tensor([1, 5, 9])]).double()
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(2, 4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, B: layer(x), (x, layer.B))
    outs = []
    for fused in (True, False):
        monkeypatch.setattr(SelectorLayer, "fused", fused)
        y = layer(x)
        outs.append((y, *torch.autograd.grad((y**2).sum(), [x, layer.B])))
    for a, b in zip(*outs, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_gpt2_chain_merges_transposed_weights():
    model = tiny_gpt2()
    h = ga.apply(model, "random_c3la", rank=4, targets=["c_fc"], chain=2, head=(), seed=0)
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        for layer in h.layers.values():
            layer.B.normal_(std=0.1)
        before = model(x).logits
        h.chain_step()
        after = model(x).logits
    assert (after - before).abs().max() <= 1e-5
    assert all(len(layer.finished) == 1 for layer in h.layers.values())


def test_fft_whole_tiny_bert(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path / "base")
    h = ga.apply(model, "fft")
    assert h.num_trainable == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for p in h.trainable_parameters():
            p.add_(0.01)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=tmp_path / "base"))
    assert ckpt.num_trainable == ckpt.num_trainable_by_formula() == h.num_trainable
    emb = ckpt.updates["bert.embeddings.word_embeddings"]
    assert emb.transposed and emb.shape == (32, 64)
    assert torch.allclose(emb.delta(), torch.full((32, 64), 0.01), atol=1e-6)
