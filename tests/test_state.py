"""genbound.state.preserved: one context leaves a model and the process's RNGs as found;
the older names (preserved_state, analysis_mode) are uses of it."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch
from torch import nn

from genbound.curvature.context import analysis_mode, attention_settings
from genbound.state import preserved
from genbound.tasks.state import preserved_state


class Config:
    """Stands in for a Hugging Face config."""

    def __init__(self, impl: str = "sdpa"):
        self._attn_implementation = impl


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = Config()
        self.lin = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.norm(self.lin(x)))


def prepared():
    model = Net().train()
    model.norm.eval()  # a mixture of modes to restore
    model.lin.bias.requires_grad_(False)
    model(torch.randn(5, 4)).sum().backward()  # lin.weight has a gradient, others none
    return model


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "attn": attention_settings(model),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].copy(),
        "python": random.getstate(),
    }


def assert_same(a, b, *, values=True):
    if values:
        assert a["state"].keys() == b["state"].keys()
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k]), k
        for n, g in a["grads"].items():
            assert (g is None) == (b["grads"][n] is None), n
            assert g is None or torch.equal(g, b["grads"][n]), n
    assert a["grad_ids"] == b["grad_ids"]
    assert a["flags"] == b["flags"] and a["modes"] == b["modes"] and a["attn"] == b["attn"]
    assert torch.equal(a["torch"], b["torch"]) and np.array_equal(a["numpy"], b["numpy"])
    assert a["python"] == b["python"]


def disturb(model):
    """Everything an analysis might change: modes, flags, gradients, values, buffers,
    attention, all three RNGs."""
    model.eval()
    model.config._attn_implementation = "eager"
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    model(torch.randn(6, 4)).square().sum().backward()  # new and accumulated gradients
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    np.random.rand(3)
    random.random()


@pytest.mark.parametrize("raises", [False, True])
def test_preserved_restores_everything_with_parameters(raises):
    model = prepared()
    before = snapshot(model)
    expected = pytest.raises(RuntimeError) if raises else contextlib.nullcontext()
    with expected, preserved(model, parameters=True):
        disturb(model)
        if raises:
            raise RuntimeError("analysis failed")
    assert_same(before, snapshot(model))


def test_without_parameters_values_stay_changed_but_the_rest_is_restored():
    model = prepared()
    before = snapshot(model)
    with preserved(model):
        disturb(model)
    after = snapshot(model)
    assert_same(before, after, values=False)
    assert torch.equal(after["state"]["lin.weight"], before["state"]["lin.weight"] + 1.0)


def test_old_names_are_uses_of_it():
    assert preserved_state is preserved
    model = prepared()
    before = snapshot(model)
    with analysis_mode(model):
        assert not any(m.training for m in model.modules())
        assert attention_settings(model) == ["eager"]
        np.random.rand(2), random.random(), torch.rand(2)
        model.lin.weight.requires_grad_(False)
    assert_same(before, snapshot(model))
    assert attention_settings(model) == ["sdpa"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_restored_where_initialised():
    torch.cuda.init()
    before = torch.cuda.get_rng_state_all()
    model = prepared()
    with preserved(model):
        torch.rand(4, device="cuda")
    after = torch.cuda.get_rng_state_all()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
