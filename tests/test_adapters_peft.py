"""LoRA-family runs exported as PEFT adapter folders load in peft and merge to our weights."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2
from helpers import assert_rel_close

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint


def randomize(handle, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("method", "model_fn", "targets", "kw"),
    [
        ("lora", tiny_bert, ["query", "value"], dict(alpha=8)),
        ("lora", tiny_bert, ["query", "dense"], dict(alpha=6, rslora=True)),
        ("asym", tiny_bert, ["key"], dict(alpha=4)),
        ("lora_plus", tiny_bert, ["value"], dict(lr_ratio=8)),
        ("lora", tiny_gpt2, ["c_attn", "c_fc"], dict(alpha=8, head=())),
    ],
)
def test_peft_export_matches_merge_and_unload(method, model_fn, targets, kw, tmp_path):
    from peft import PeftModel

    base_dir = tmp_path / "base"
    model_fn().save_pretrained(base_dir)
    model = type(model_fn()).from_pretrained(base_dir)
    h = ga.apply(model, method, rank=4, targets=targets, seed=1, **kw)
    randomize(h)
    ours = h.merged_weights()
    out = h.export_peft(tmp_path / "peft", base_model_name_or_path=str(base_dir))

    fresh = type(model).from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(fresh, out).merge_and_unload().state_dict()
    assert ours
    for key, value in ours.items():
        assert_rel_close(merged[key], value, 1e-6, key)
    # genbound reads the exported folder with the same dW
    ckpt = load_checkpoint(out, base=base_dir)
    for name, dw in h.delta_weights().items():
        assert_rel_close(ckpt.updates[name].delta(torch.float64), dw, 1e-6, name)


def test_peft_export_refuses_other_variants(tmp_path):
    h = ga.apply(tiny_bert(), "cla", rank=2, targets=["query"])
    with pytest.raises(GenboundError, match="export_peft"):
        h.export_peft(tmp_path / "peft")
