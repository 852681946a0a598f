"""Bad input: each case gets a one-paragraph error naming the file and key, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import build_peft, tiny_bert
from safetensors.torch import load_file, save_file

from genbound import load_checkpoint
from genbound.cli.main import main
from genbound.errors import CheckpointError, GenboundError

CFG = dict(r=4, lora_alpha=8, target_modules=["query", "value"])
A_KEY = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
B_KEY = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"


@pytest.fixture
def adapter(tmp_path):
    base_dir, adapter_dir, _ = build_peft(tmp_path, tiny_bert, CFG)
    return base_dir, adapter_dir


def _edit_config(adapter_dir, **changes):
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _edit_tensors(adapter_dir, fn):
    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def _assert_fails(args, capsys, *needles):
    """The CLI exits 2 with one paragraph naming every needle, and no traceback."""
    capsys.readouterr()  # drop what fixtures printed
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("genbound: error: ")
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, "one paragraph"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def test_missing_path(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    _assert_fails(["inspect", str(tmp_path / "nope")], capsys, str(tmp_path / "nope"), "not found")


def test_rank_in_config_does_not_match_tensors(adapter, capsys):
    _, ad = adapter
    _edit_config(ad, r=8)
    _assert_fails(
        ["inspect", str(ad)], capsys, "adapter_model.safetensors", A_KEY, "r = 8", "(4, 32)"
    )


def test_missing_b_for_an_a(adapter, capsys):
    _, ad = adapter
    _edit_tensors(ad, lambda t: t.pop(B_KEY))
    _assert_fails(["inspect", str(ad)], capsys, "adapter_model.safetensors", A_KEY, "only A")


def test_factors_disagree_on_rank(adapter, capsys):
    _, ad = adapter
    _edit_tensors(ad, lambda t: t.__setitem__(B_KEY, torch.zeros(32, 3)))
    _assert_fails(["inspect", str(ad)], capsys, B_KEY, "(32, 3)")


def test_unknown_peft_type(adapter, capsys):
    _, ad = adapter
    _edit_config(ad, peft_type="IA3")
    _assert_fails(["inspect", str(ad)], capsys, "adapter_config.json", "peft_type", "'IA3'")


def test_pissa_adapter_refused(adapter, capsys):
    _, ad = adapter
    _edit_config(ad, init_lora_weights="pissa")
    _assert_fails(["inspect", str(ad)], capsys, "init_lora_weights", "'pissa'")


def test_nan_and_inf_weights(adapter, capsys):
    _, ad = adapter

    def poison(t):
        t[A_KEY][0, 0] = float("nan")
        t[A_KEY][1, 1] = float("inf")

    _edit_tensors(ad, poison)
    _assert_fails(["inspect", str(ad)], capsys, A_KEY, "1 NaN and 1 Inf")


def test_truncated_safetensors(adapter, capsys):
    _, ad = adapter
    path = ad / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_fails(["inspect", str(ad)], capsys, str(path), "truncated")


def test_base_shapes_do_not_match(adapter, tmp_path, capsys):
    _, ad = adapter
    from transformers import BertConfig, BertForSequenceClassification

    other = BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            num_labels=3,
        )
    )
    other.save_pretrained(tmp_path / "other")
    _assert_fails(
        ["inspect", str(ad), "--base", str(tmp_path / "other")],
        capsys,
        "bert.encoder.layer.0.attention.self.query.weight",
        "(32, 32)",
        "(48, 48)",
    )


def test_base_lacks_the_adapted_module(adapter, tmp_path, capsys):
    _, ad = adapter
    save_file({"unrelated.weight": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    _assert_fails(
        ["inspect", str(ad), "--base", str(tmp_path / "wrong.safetensors")],
        capsys,
        "wrong.safetensors",
        "query.weight",
    )


def test_unreadable_inputs(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    _assert_fails(["inspect", str(junk), "--base", str(junk)], capsys, str(junk))
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "readme.txt").write_text("hello")
    _assert_fails(["inspect", str(plain)], capsys, str(plain), "adapter_config.json")
    bad_json = tmp_path / "badjson"
    shutil.copytree(plain, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    _assert_fails(["inspect", str(bad_json)], capsys, "adapter_config.json", "invalid JSON")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied(adapter, capsys):
    _, ad = adapter
    path = ad / "adapter_model.safetensors"
    path.chmod(0)
    try:
        _assert_fails(["inspect", str(ad)], capsys, str(path))
    finally:
        path.chmod(0o644)


def test_run_manifest_errors(tmp_path, capsys):
    from genbound.checkpoint import write_run

    t = {"B": torch.ones(4, 2), "i": torch.tensor([0, 9])}
    upd = {"x": {"shape": [4, 6], "link": {"kind": "selector", "B": "B", "indices": "i"}}}
    with pytest.raises(GenboundError, match=r"indices in \[0, 6\)"):
        write_run(tmp_path / "r1", {"variant": "cla", "updates": upd}, t)
    ok = write_run(
        tmp_path / "r2",
        {"variant": "cla", "updates": {"x": {"shape": [4, 10], "link": upd["x"]["link"]}}},
        t,
    )
    man = json.loads((ok / "genbound.json").read_text())
    man["variant"] = "magic"
    (ok / "genbound.json").write_text(json.dumps(man))
    _assert_fails(["inspect", str(ok)], capsys, "genbound.json", "variant", "magic")
    man["variant"], man["schema"] = "cla", "genbound.run/99"
    (ok / "genbound.json").write_text(json.dumps(man))
    _assert_fails(["inspect", str(ok)], capsys, "genbound.json", "schema", "genbound.run/99")


def test_nonpositive_n_train(adapter, capsys):
    _, ad = adapter
    _assert_fails(["inspect", str(ad), "--n-train", "0"], capsys, "--n-train", "positive", "0")
    with pytest.raises(GenboundError, match="n_train > 0"):
        load_checkpoint(ad, n_train=0)


def test_failed_report_writes_nothing(adapter, tmp_path, capsys):
    _, ad = adapter
    _edit_config(ad, r=8)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    _assert_fails(["report", str(ad), "--out", str(tmp_path / "rep")], capsys, "r = 8")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_existing_report_needs_force(adapter, tmp_path, capsys):
    _, ad = adapter
    assert main(["report", str(ad), "--out", str(tmp_path / "rep")]) == 0
    first = (tmp_path / "rep" / "report.json").read_text()
    _assert_fails(["report", str(ad), "--out", str(tmp_path / "rep")], capsys, "--force")
    assert (tmp_path / "rep" / "report.json").read_text() == first
    assert main(["report", str(ad), "--out", str(tmp_path / "rep"), "--force"]) == 0


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "genbound.cli.main", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr
