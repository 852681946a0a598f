"""genbound run directories, full fine-tunes as two state dicts, and Trainer checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_bert
from helpers import assert_rel_close, numpy_svals
from safetensors.torch import load_file, save_file

from genbound import load_checkpoint
from genbound.checkpoint import (
    ChainUpdate,
    DenseUpdate,
    DoraUpdate,
    LowRankUpdate,
    SelectorUpdate,
    write_run,
)

N, M = 12, 10


def _run_fixture(tmp_path):
    """A base model file and a run whose updates cover every link kind, with hand-built dW."""
    g = torch.Generator().manual_seed(0)
    base = {
        "lin1.weight": torch.randn(N, M, generator=g),
        "lin2.weight": torch.randn(N, M, generator=g),
        "lin3.weight": torch.randn(N, M, generator=g),
        "conv.weight": torch.randn(M, N, generator=g),  # stored transposed (Conv1D)
        "lin4.weight": torch.randn(N, M, generator=g),
        "norm.weight": torch.ones(N),
    }
    save_file(base, str(tmp_path / "base.safetensors"))
    t = {
        "B1": torch.randn(N, 3, generator=g),
        "A1": torch.randn(3, M, generator=g),
        "Bs": torch.randn(N, 2, generator=g),
        "idx": torch.tensor([0, 7]),
        "c0B": torch.randn(N, 2, generator=g),
        "c0i": torch.tensor([0, 1]),
        "c1B": torch.randn(N, 2, generator=g),
        "c1i": torch.tensor([2, 3]),
        "c2D": torch.randn(N, M, generator=g) * 0.1,
        "convD": torch.randn(M, N, generator=g),
        "dB": torch.randn(N, 2, generator=g),
        "dA": torch.randn(2, M, generator=g),
        "mag": torch.rand(N, generator=g) + 0.5,
        "normV": torch.ones(N) + 0.1 * torch.randn(N, generator=g),
        "headV": torch.randn(3, N, generator=g),
        "headI": torch.randn(3, N, generator=g),
    }

    def sel(b, i, s=1.0):
        return {
            "kind": "selector",
            "B": b,
            "indices": i,
            "scale": s,
            "trained": ["B"],
        }

    updates = {
        "lin1": {
            "shape": [N, M],
            "link": {"kind": "lowrank", "B": "B1", "A": "A1", "scale": 0.5, "trained": ["B"]},
        },
        "lin2": {"shape": [N, M], "link": sel("Bs", "idx", 2.0)},
        "lin3": {
            "shape": [N, M],
            "link": {
                "kind": "chain",
                "links": [sel("c0B", "c0i"), sel("c1B", "c1i"), {"kind": "dense", "delta": "c2D"}],
            },
        },
        "conv": {"shape": [N, M], "transposed": True, "link": {"kind": "dense", "delta": "convD"}},
        "lin4": {
            "shape": [N, M],
            "link": {
                "kind": "dora",
                "lowrank": {"kind": "lowrank", "B": "dB", "A": "dA", "scale": 1.5},
                "magnitude": "mag",
            },
        },
        "norm.weight": {
            "param": "norm.weight",
            "shape": [N],
            "link": {"kind": "dense", "value": "normV"},
        },
        "head": {
            "param": "head.weight",
            "shape": [3, N],
            "link": {"kind": "dense", "value": "headV", "initial": "headI"},
        },
    }
    manifest = {
        "variant": "c3la",
        "hparams": {"rank": 2, "chain": 3, "targets": ["lin"]},
        "base_model": {"path": "../base.safetensors"},
        "n_train": 100,
        "seed": 3,
        "dtype": "float32",
        "metrics": {"train_loss": 0.5, "test_loss": 0.7},
        "updates": updates,
    }
    run = write_run(tmp_path / "run", manifest, t)

    def E(idx):  # dense selector (r x m), independent of genbound's gather
        e = torch.zeros(len(idx), M, dtype=torch.float64)
        for row, col in enumerate(idx):
            e[row, col] = 1.0
        return e

    d = lambda x: x.to(torch.float64)  # noqa: E731
    w4 = d(base["lin4.weight"])
    v = w4 + 1.5 * d(t["dB"]) @ d(t["dA"])
    expected = {
        "lin1": 0.5 * d(t["B1"]) @ d(t["A1"]),
        "lin2": 2.0 * d(t["Bs"]) @ E([0, 7]),
        "lin3": d(t["c0B"]) @ E([0, 1]) + d(t["c1B"]) @ E([2, 3]) + d(t["c2D"]),
        "conv": d(t["convD"]).T,
        "lin4": d(t["mag"])[:, None] * v / v.norm(dim=1, keepdim=True) - w4,
        "norm.weight": d(t["normV"]) - 1.0,
        "head": d(t["headV"]) - d(t["headI"]),
    }
    return run, expected


def test_run_roundtrip_every_link_kind(tmp_path):
    run, expected = _run_fixture(tmp_path)
    ckpt = load_checkpoint(run)
    assert ckpt.format == "genbound" and ckpt.variant == "c3la"
    assert ckpt.base is not None and ckpt.n_train == 100 and ckpt.seed == 3
    assert ckpt.metrics["test_loss"] == 0.7
    kinds = {k: type(u) for k, u in ckpt.updates.items()}
    assert kinds == {
        "lin1": LowRankUpdate,
        "lin2": SelectorUpdate,
        "lin3": ChainUpdate,
        "conv": DenseUpdate,
        "lin4": DoraUpdate,
        "norm.weight": DenseUpdate,
        "head": DenseUpdate,
    }
    for name, ref in expected.items():
        u = ckpt.updates[name]
        assert_rel_close(u.delta(torch.float64), ref, 1e-12, what=name)
        if u.is_matrix:
            assert_rel_close(
                u.singular_values(), numpy_svals(ref)[: len(u.singular_values())], 1e-10, what=name
            )
    assert ckpt.updates["conv"].delta(stored=True).shape == (M, N)
    # trained scalars: lowrank trains B only; selectors their B; chain sums links; dense all; DoRA r(m+n)+n
    assert ckpt.updates["lin1"].num_trainable == N * 3
    assert ckpt.updates["lin3"].num_trainable == 2 * N * 2 + N * M
    assert ckpt.updates["lin4"].num_trainable == 2 * (N + M) + N
    assert ckpt.updates["head"].is_new


def test_run_without_base_and_with_override(tmp_path):
    run, expected = _run_fixture(tmp_path)
    (tmp_path / "base.safetensors").rename(tmp_path / "elsewhere.safetensors")
    ckpt = load_checkpoint(run)
    assert ckpt.base is None and any("not found" in n for n in ckpt.notes)
    assert_rel_close(ckpt.updates["lin1"].delta(torch.float64), expected["lin1"], 1e-12)
    ckpt = load_checkpoint(run, base=tmp_path / "elsewhere.safetensors")
    assert_rel_close(ckpt.updates["lin4"].delta(torch.float64), expected["lin4"], 1e-12)


def test_write_run_is_atomic_and_refuses_overwrite(tmp_path):
    from genbound.errors import GenboundError

    run, _ = _run_fixture(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(GenboundError, match="already exists"):
        write_run(run, {"variant": "lora", "updates": {}}, {})
    bad = {
        "variant": "lora",
        "updates": {"x": {"shape": [4, 4], "link": {"kind": "lowrank", "B": "B", "A": "A"}}},
    }
    with pytest.raises(GenboundError, match="does not match"):
        write_run(tmp_path / "bad", bad, {"B": torch.zeros(4, 2), "A": torch.zeros(3, 4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_full_finetune_two_state_dicts(tmp_path, fmt):
    base = tiny_bert()
    tuned = tiny_bert()
    g = torch.Generator().manual_seed(5)
    changed = [
        "bert.encoder.layer.1.output.dense.weight",
        "bert.encoder.layer.0.attention.output.LayerNorm.bias",
        "classifier.weight",
    ]
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name in changed:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    sd_base, sd_tuned = base.state_dict(), tuned.state_dict()
    sd_tuned["extra_head.weight"] = torch.randn(2, 32, generator=g)
    if fmt == "safetensors":
        save_file(sd_base, str(tmp_path / "base.safetensors"))
        save_file(sd_tuned, str(tmp_path / "tuned.safetensors"))
    else:
        torch.save(sd_base, tmp_path / "base.pt")
        torch.save(sd_tuned, tmp_path / "tuned.pt")
    ckpt = load_checkpoint(tmp_path / f"tuned.{fmt}", base=tmp_path / f"base.{fmt}")
    assert ckpt.variant == "fft" and ckpt.format == "state_dicts"
    names = {u.param for u in ckpt.updates.values()}
    assert names == {*changed, "extra_head.weight"}
    for u in ckpt.updates.values():
        ref = sd_tuned[u.param].double() - (sd_base[u.param].double() if u.param in sd_base else 0)
        assert_rel_close(u.delta(torch.float64), ref, 1e-12, what=u.param)
    assert ckpt.updates["extra_head"].is_new
    assert ckpt.num_trainable == sum(sd_tuned[n].numel() for n in names)
    w = ckpt.updates["bert.encoder.layer.1.output.dense"]
    np.testing.assert_allclose(w.singular_values(), numpy_svals(w.delta(torch.float64)), rtol=1e-12)


def test_trainer_checkpoint_with_log_history(tmp_path):
    """A real transformers Trainer run with a PEFT model: checkpoint-N/ is read with its losses."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    model = type(tiny_bert()).from_pretrained(base_dir)
    pm = get_peft_model(
        model, LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(0, 64, (8,), generator=g), "labels": torch.tensor(i % 3)}
        for i in range(16)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=4,
        save_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=pm, args=args, train_dataset=rows, eval_dataset=rows[:8])
    trainer.train()
    ckpt_dir = tmp_path / "out" / "checkpoint-4"
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    evals = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    ckpt = load_checkpoint(ckpt_dir)
    assert ckpt.metrics["last_logged_train_loss"] == losses[-1]
    assert ckpt.metrics["eval_loss"] == evals[-1]
    # logging_steps=1: the last logged loss is the mean over the last step alone
    assert ckpt.metrics["last_logged_train_loss_step"] == 4
    assert ckpt.metrics["last_logged_train_loss_window"] == 1
    assert [loss for _, loss in ckpt.metrics["train_loss_history"]] == losses
    assert ckpt.metrics["global_step"] == 4
    merged = pm.merge_and_unload().state_dict()
    base_state = load_file(str(base_dir / "model.safetensors"))
    for u in ckpt.updates.values():
        key = ckpt.base.resolve(u.param)
        assert_rel_close(
            base_state[key].double() + u.delta(torch.float64, stored=True),
            merged[key],
            1e-6,
            what=key,
        )
    # a folder of checkpoints is not one checkpoint: the error says which to pick
    from genbound.errors import GenboundError

    with pytest.raises(GenboundError, match="checkpoint-4"):
        load_checkpoint(tmp_path / "out")


def test_loading_reads_no_base_weights(tmp_path, monkeypatch):
    """W0 is read lazily: loading checks shapes from headers; values are read one tensor at a time."""
    from conftest import build_peft

    from genbound.checkpoint.base import BaseModel

    _, adapter_dir, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query"], use_dora=True)
    )
    reads = []
    original = BaseModel.tensor
    monkeypatch.setattr(
        BaseModel, "tensor", lambda self, name: reads.append(name) or original(self, name)
    )
    ckpt = load_checkpoint(adapter_dir)
    assert reads == []
    ckpt.updates["bert.encoder.layer.1.attention.self.query"].delta()  # DoRA needs its own W0 only
    assert reads == ["bert.encoder.layer.1.attention.self.query.weight"]


def test_new_head_rebuilds_to_its_trained_value(tmp_path):
    """W0 of a new tensor is its recorded initial value, so W0 + dW is the trained value."""
    run, _ = _run_fixture(tmp_path)
    ckpt = load_checkpoint(run)
    head = ckpt.updates["head"]
    t = load_file(str(run / "updates.safetensors"))
    assert torch.equal(
        (head.base_weight(torch.float64) + head.delta(torch.float64)).float(), t["headV"]
    )
