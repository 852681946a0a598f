"""Property test: every curvature and landscape entry point leaves the model as found.

Parameters bit-identical, requires_grad flags, the train/eval flag of every submodule,
the global torch RNG state and the attention setting are all checked, for models in
train mode with dropout and an HF-style config asking for SDPA attention, and after an
evaluation that raises.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genbound.adapters.lora import LoraLayer
from genbound.curvature import (
    attention_settings,
    hessian_density,
    hessian_trace,
    top_eigenvalues,
)
from genbound.landscape import evaluate_plane, landscape_1d, landscape_2d
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss


class Config:
    """Stands in for a Hugging Face config."""

    def __init__(self):
        self._attn_implementation = "sdpa"


class Net(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = Config()
        self.inp = LoraLayer(nn.Linear(6, 10), rank=2, scale=0.5, generator=g)
        with torch.no_grad():
            self.inp.B.normal_(generator=g)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(10, 3)

    def forward(self, x):
        assert self.config._attn_implementation == "eager"  # switched for the duration
        return self.out(self.drop(torch.tanh(self.inp(x))))


def make_objective():
    torch.manual_seed(0)
    model = Net()
    model.train()
    model.out.bias.requires_grad_(False)  # a mixture of flags to restore
    X, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    trainable = ("inp.B", "inp.A", "out.weight")
    return Objective(
        model, [Batch(X[:20], y[:20]), Batch(X[20:], y[20:])], cross_entropy_loss, trainable
    )


def snapshot(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state().clone(),
        "attn": attention_settings(model),
        "grads": {n: p.grad for n, p in model.named_parameters()},
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    for n, p in before["params"].items():
        assert torch.equal(p, after["params"][n]), n
    assert after["flags"] == before["flags"]
    assert after["modes"] == before["modes"]
    assert torch.equal(after["rng"], before["rng"])
    assert after["attn"] == before["attn"] == ["sdpa"]
    assert all(g is None for g in after["grads"].values())


def _snaps(obj):
    B, A = obj.model.inp.B.detach(), obj.model.inp.A.detach()
    return [{"inp.B": B * s, "inp.A": A + 0.1 * s * A.flip(0)} for s in (0.0, 0.4, 0.9)]


ENTRY_POINTS = {
    "eigen-factors": lambda o: top_eigenvalues(o, k=2),
    "eigen-merged": lambda o: top_eigenvalues(o, k=2, parameterization="merged"),
    "eigen-all": lambda o: top_eigenvalues(o, params="all", max_iter=10),
    "trace-factors": lambda o: hessian_trace(o, 12),
    "trace-merged": lambda o: hessian_trace(o, 12, parameterization="merged"),
    "density-factors": lambda o: hessian_density(o, 2, 8),
    "density-merged": lambda o: hessian_density(o, 2, 8, parameterization="merged"),
    "landscape-1d-random": lambda o: landscape_1d(o, steps=5),
    "landscape-1d-path": lambda o: landscape_1d(o, kind="path", steps=5),
    "landscape-1d-path-merged": lambda o: landscape_1d(o, kind="path", space="merged", steps=5),
    "landscape-2d-random": lambda o: landscape_2d(o, steps=3),
    "landscape-2d-random-full": lambda o: landscape_2d(o, steps=3, space="full"),
    "landscape-2d-random-merged": lambda o: landscape_2d(o, steps=3, space="merged"),
    "landscape-2d-pca": lambda o: landscape_2d(o, kind="pca", snapshots=_snaps(o), steps=3),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_entry_point_leaves_model_as_found(name):
    obj = make_objective()
    before = snapshot(obj.model)
    ENTRY_POINTS[name](obj)
    assert_unchanged(obj.model, before)


def test_evaluation_that_raises_still_restores():
    obj = make_objective()
    before = snapshot(obj.model)
    calls = {"n": 0}

    def failing(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return cross_entropy_loss(model, batch)

    bad = Objective(obj.model, obj.batches, failing, obj.trainable)
    d = {"inp.B": torch.ones(10, 2), "out.bias": torch.ones(3)}
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_plane(bad, d, None, [0.5, 1.0])
    assert_unchanged(obj.model, before)
    calls["n"] = 1  # the second batch's gradient raises
    with pytest.raises(RuntimeError, match="boom"):
        top_eigenvalues(bad)
    assert_unchanged(obj.model, before)


def test_hf_bert_with_sdpa_and_peft_lora():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=3,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    model = transformers.BertForSequenceClassification(cfg)
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    model.train()
    ids = torch.randint(0, 64, (12, 9))
    batch = Batch(
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 3, (12,))
    )
    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    obj = Objective(model, [batch], cross_entropy_loss, trainable)
    before = snapshot(model)
    before["attn"] = attention_settings(model)
    r = top_eigenvalues(obj, k=1)
    m = top_eigenvalues(obj, k=1, parameterization="merged")
    land = landscape_1d(obj, steps=3)
    after = attention_settings(model)
    assert after == before["attn"] and "sdpa" in after
    for n, p in before["params"].items():
        assert torch.equal(p, dict(model.named_parameters())[n])
    assert {n: mm.training for n, mm in model.named_modules()} == before["modes"]
    assert torch.equal(torch.get_rng_state(), before["rng"])
    assert r.converged and m.converged and m.parameterization == "merged dW"
    assert len(land.losses) == 3
