"""PEFT adapters built by peft itself: genbound's dW must equal peft's merge_and_unload()."""

from __future__ import annotations

import pytest
import torch
from conftest import build_peft, tiny_bert, tiny_gpt2, tiny_llama
from helpers import assert_rel_close, merged_from_genbound, numpy_svals
from safetensors.torch import load_file

from genbound import load_checkpoint
from genbound.checkpoint import DoraUpdate, LowRankUpdate

CASES = {
    "bert-lora-modules_to_save": (
        tiny_bert,
        dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
    ),
    "bert-rslora": (
        tiny_bert,
        dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["query", "key", "dense"]),
    ),
    "bert-rank-alpha-patterns": (
        tiny_bert,
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            rank_pattern={"value": 2, "layer.1.attention.self.query": 3},
            alpha_pattern={"layer.1.attention.self.value": 5},
        ),
    ),
    "bert-dora": (
        tiny_bert,
        dict(r=4, lora_alpha=8, use_dora=True, target_modules=["query", "value"]),
    ),
    "bert-embedding-lora": (
        tiny_bert,
        dict(r=3, lora_alpha=4, target_modules=["word_embeddings", "query"]),
    ),
    "bert-bias-lora_only": (
        tiny_bert,
        dict(r=2, lora_alpha=4, target_modules=["value"], bias="lora_only"),
    ),
    "gpt2-fan_in_fan_out": (
        tiny_gpt2,
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
    ),
    "llama-lora": (
        tiny_llama,
        dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]),
    ),
    "llama-dora-rslora": (
        tiny_llama,
        dict(
            r=2, lora_alpha=4, use_dora=True, use_rslora=True, target_modules=["o_proj", "up_proj"]
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_delta_matches_merge_and_unload(tmp_path, case):
    model_fn, cfg = CASES[case]
    base_dir, adapter_dir, merged = build_peft(tmp_path, model_fn, cfg)
    ckpt = load_checkpoint(adapter_dir)
    assert ckpt.format == "peft"
    assert ckpt.base is not None, "base found from base_model_name_or_path"
    assert ckpt.variant == ("dora" if cfg.get("use_dora") else "lora")
    base_state = load_file(str(base_dir / "model.safetensors"))
    ours = merged_from_genbound(ckpt, base_state)
    n_changed = 0
    for key, ref in merged.items():
        if key not in ours:
            continue  # tied weights peft re-exposes under a second name
        if not torch.equal(ref, base_state[key]):
            n_changed += 1
        assert_rel_close(ours[key], ref, 1e-6, what=f"{case}: {key}")
    assert n_changed >= len([u for u in ckpt.updates.values() if u.is_matrix]) - 1
    assert ckpt.num_trainable > 0


@pytest.mark.parametrize("case", list(CASES))
def test_singular_values_match_numpy_svd_of_delta(tmp_path, case):
    model_fn, cfg = CASES[case]
    _, adapter_dir, _ = build_peft(tmp_path, model_fn, cfg)
    ckpt = load_checkpoint(adapter_dir)
    for name, u in ckpt.updates.items():
        if not u.is_matrix:
            continue
        ref = numpy_svals(u.delta(torch.float64))
        got = u.singular_values()
        assert got.shape[0] <= ref.shape[0]
        assert_rel_close(got, ref[: got.shape[0]], 1e-10, what=f"{case}: svals of {name}")
        # what the factored route leaves out is zero
        assert float(ref[got.shape[0] :].max(initial=0.0)) <= 1e-10 * max(ref[0], 1e-300)


def test_scales_follow_rslora_and_patterns(tmp_path):
    _, adapter_dir, _ = build_peft(tmp_path, tiny_bert, CASES["bert-rank-alpha-patterns"][1])
    ckpt = load_checkpoint(adapter_dir)
    u = ckpt.updates
    assert u["bert.encoder.layer.0.attention.self.query"].rank == 4
    assert u["bert.encoder.layer.0.attention.self.query"].scale == pytest.approx(8 / 4)
    assert u["bert.encoder.layer.1.attention.self.query"].rank == 3
    assert u["bert.encoder.layer.0.attention.self.value"].rank == 2
    assert u["bert.encoder.layer.1.attention.self.value"].scale == pytest.approx(5 / 2)
    _, adapter_dir, _ = build_peft(tmp_path / "rs", tiny_bert, CASES["bert-rslora"][1])
    ckpt = load_checkpoint(adapter_dir)
    assert ckpt.hparams.rslora
    assert all(
        x.scale == pytest.approx(6 / 2.0)
        for x in ckpt.updates.values()
        if isinstance(x, LowRankUpdate)
    )


def test_trainable_counts_per_kind(tmp_path):
    _, adapter_dir, _ = build_peft(tmp_path, tiny_bert, CASES["bert-lora-modules_to_save"][1])
    ckpt = load_checkpoint(adapter_dir)
    # 2 layers x (query, value) x r (m + n) + classifier weight (3 x 32) + bias (3)
    assert ckpt.num_trainable == 2 * 2 * 4 * (32 + 32) + 3 * 32 + 3
    assert ckpt.num_trainable_by_formula() == ckpt.num_trainable
    _, adapter_dir, _ = build_peft(tmp_path / "d", tiny_bert, CASES["bert-dora"][1])
    ckpt = load_checkpoint(adapter_dir)
    assert all(isinstance(u, DoraUpdate) for u in ckpt.updates.values())
    assert ckpt.num_trainable == 4 * (4 * 64 + 32)
    assert ckpt.num_trainable_by_formula() == ckpt.num_trainable


def test_embedding_update_is_transposed_table(tmp_path):
    _, adapter_dir, _ = build_peft(tmp_path, tiny_bert, CASES["bert-embedding-lora"][1])
    ckpt = load_checkpoint(adapter_dir)
    emb = ckpt.updates["bert.embeddings.word_embeddings"]
    assert emb.transposed and emb.shape == (32, 64)  # hidden x vocab (math), stored vocab x hidden
    assert emb.delta(stored=True).shape == (64, 32)


def test_base_given_explicitly_and_missing(tmp_path):
    base_dir, adapter_dir, _ = build_peft(
        tmp_path, tiny_bert, CASES["bert-lora-modules_to_save"][1]
    )
    explicit = load_checkpoint(adapter_dir, base=base_dir / "model.safetensors")
    assert explicit.base is not None
    # without a findable base: factors still load; base-dependent parts say what they need
    import json

    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "some-org/some-model"
    cfg_path.write_text(json.dumps(cfg))
    ckpt = load_checkpoint(adapter_dir)
    assert ckpt.base is None and ckpt.base_ref == "some-org/some-model"
    q = ckpt.updates["bert.encoder.layer.0.attention.self.query"]
    assert q.spectral_norm() > 0
    from genbound.errors import GenboundError

    with pytest.raises(GenboundError, match="base model"):
        ckpt.updates["classifier"].delta()


def test_extra_adapters_in_subfolders(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    model = type(tiny_bert()).from_pretrained(base_dir)
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["query"]))
    pm.add_adapter("second", LoraConfig(r=2, lora_alpha=3, target_modules=["value"]))
    from conftest import randomize_adapters

    randomize_adapters(pm)
    pm.save_pretrained(tmp_path / "ad")
    pm.set_adapter("second")
    merged = pm.merge_and_unload(adapter_names=["second"]).state_dict()
    top = load_checkpoint(tmp_path / "ad")
    assert set(top.others) == {"second"}
    second = load_checkpoint(tmp_path / "ad", adapter="second", base=base_dir)
    assert second.adapter_name == "second"
    assert set(second.updates) == {f"bert.encoder.layer.{i}.attention.self.value" for i in range(2)}
    ours = merged_from_genbound(second, load_file(str(base_dir / "model.safetensors")))
    for key in ours:
        assert_rel_close(ours[key], merged[key], 1e-6, what=key)
