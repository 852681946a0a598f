"""``genbound demo --fast``: the real MiniLM and tweets, trained, reported, compared, reused."""

from __future__ import annotations

import json

import torch

from genbound.checkpoint import load_checkpoint
from genbound.cli.main import main
from genbound.demo import FAST
from genbound.tasks.reference import TaskReference, load_task


def test_fast_demo_trains_reports_compares_and_reuses(fast_demo, capsys):
    out, result = fast_demo
    names = [s.name for s in FAST.variants]
    # trained and reported by this session (or by another xdist worker, then reused)
    assert list(result.runs) == names and list(result.reports) == names
    assert list(result.trained) in (names, []) and list(result.reported) in (names, [])
    for spec in FAST.variants:
        name = spec.name
        ckpt = load_checkpoint(out / "runs" / name)
        assert ckpt.n_train == FAST.n_train and ckpt.variant == spec.method
        task = load_task(TaskReference.from_json(ckpt.data))
        assert task.n_train == FAST.n_train and task.num_labels == 3
        rep = out / "reports" / name
        doc = json.loads((rep / "report.json").read_text())
        assert doc["gap"]["train"]["n"] == FAST.n_train and doc["gap"]["test"]["n"] == FAST.n_test
        comp = doc["bounds"]["compression"]
        assert comp["n_train"] == FAST.n_train and 0 < comp["bound"] <= 1
        assert doc["bounds"]["mi"]["d_actual"] == ckpt.num_trainable
        assert doc["curvature"]["examples"] == FAST.curvature_examples
        assert set(doc["landscapes"]) == {"random-filter", "path"}
        assert (rep / "report.html").stat().st_size > 10_000  # figures embedded
        if spec.subspace is not None:  # only z trained, coded on the codebook it was tuned on
            assert doc["checkpoint"]["subspace"]["d"] == spec.subspace == ckpt.num_trainable
            assert comp["preamble"]["bits"] > 0 and len(torch.unique(ckpt.subspace.z[0])) <= 4
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["run"] for r in sweep["rows"]] == names
    assert {c["measure"] for c in sweep["correlations"]} >= {"mi_bound", "compression_bound"}
    assert (out / "sweep" / "figures" / "measures_vs_gap.png").stat().st_size > 1000

    # the command line on the same folder trains nothing and recomputes no report
    before = {n: (out / "reports" / n / "report.json").read_text() for n in names}
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(names)} runs (0 trained now)" in printed and "sweep.md" in printed
    assert {n: (out / "reports" / n / "report.json").read_text() for n in names} == before


def test_figures_script_on_the_fast_demo(fast_demo, tmp_path, capsys):
    from genbound.figures import main as figures_main

    out, _ = fast_demo
    assert figures_main(["--demo", str(out), "--fast", "--out", str(tmp_path / "figs")]) == 0
    made = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {"sweep_measures_vs_gap.png", "bounds_vs_test_error.png", "lora_spectra.png"} <= made
    assert "lora_landscape_path.png" in made
