"""``genbound inspect`` and ``genbound report`` on a real PEFT checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_peft, tiny_bert
from helpers import numpy_svals

from genbound import load_checkpoint
from genbound.cli.main import main


def test_inspect_table_shows_every_update(tmp_path, capsys):
    _, ad, _ = build_peft(
        tmp_path,
        tiny_bert,
        dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    ckpt = load_checkpoint(ad)
    capsys.readouterr()
    assert main(["inspect", str(ad)]) == 0
    out = capsys.readouterr().out
    assert "variant lora, rank 4, alpha 8, scale 2" in out
    assert f"trainable {ckpt.num_trainable:,}" in out
    for name, u in ckpt.updates.items():
        assert name in out
        ref = (
            numpy_svals(u.delta(torch.float64))[0]
            if u.is_matrix
            else float(u.delta(torch.float64).norm())
        )
        assert f"{ref:.4g}" in out, name


def test_report_json_holds_singular_values(tmp_path, capsys):
    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=3, target_modules=["value"]))
    assert main(["report", str(ad), "--out", str(tmp_path / "rep")]) == 0
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["schema"] == "genbound.report/1"
    ckpt = load_checkpoint(ad)
    assert [u["name"] for u in doc["updates"]] == list(ckpt.updates)
    for entry in doc["updates"]:
        ref = numpy_svals(ckpt.updates[entry["name"]].delta(torch.float64))
        np.testing.assert_allclose(entry["singular_values"], ref[:3], rtol=1e-10)
        assert entry["trainable"] == 3 * 64
    assert (tmp_path / "rep" / "report.md").read_text().count("| `bert.encoder") == 2


def test_report_bounds_and_skip_reasons(tmp_path, capsys):
    import math

    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=2, target_modules=["query"]))
    assert main(["report", str(ad), "--out", str(tmp_path / "no-n")]) == 0
    doc = json.loads((tmp_path / "no-n" / "report.json").read_text())
    assert doc["bounds"]["mi"] is None and "N" in doc["skipped"]["mi"]
    assert isinstance(doc["bounds"]["theorem1"]["log10_phi_dW"], float)
    assert main(["report", str(ad), "--n-train", "1000", "--out", str(tmp_path / "n")]) == 0
    doc = json.loads((tmp_path / "n" / "report.json").read_text())
    mi = doc["bounds"]["mi"]
    d = 2 * 2 * (32 + 32)  # 2 layers x r (m + n)
    assert mi["d_actual"] == d
    assert mi["bound"] == pytest.approx(
        math.sqrt(2 * 0.25 * 32 * math.log(2) * d / 1000), rel=1e-12
    )
    assert mi["vacuous"] is True  # 0-1 loss, B = 1: a bound of 2.1 says nothing, and says so
    assert "mi" not in doc["skipped"]
    md = (tmp_path / "n" / "report.md").read_text()
    assert "MI bound on the expected gap of the 0-1 loss" in md and "vacuous" in md


def test_parts_left_out_are_recorded_in_settings_not_skipped(tmp_path, capsys):
    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=2, target_modules=["query"]))
    out = tmp_path / "rep"
    assert main(["report", str(ad), "--out", str(out), "--only", "spectra,mi,gap"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["settings"]["parts"] == ["gap", "mi", "spectra"]
    # requested but impossible: a reason each; not requested: no entry
    assert set(doc["skipped"]) == {"gap", "mi"}
    assert doc["skipped"]["gap"].startswith("no data")
    assert doc["bounds"]["theorem1"] is None and doc["curvature"] is None
