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


def test_default_and_study_grids_vary_one_setting_at_a_time():
    """The default demo is the 2 x 2 x 2 x 2 grid plus two subspace runs, --study the
    4 x 2 x 3 x 2 grid plus three; every grid run shares one learning rate, so two runs that
    differ in the variant differ in nothing else."""
    from itertools import product

    from genbound.demo import DEFAULT, STUDY
    from genbound.demo.sweep import CERTIFIED_N, GRID_LR

    for config, methods, ranks, sizes, epochs, subs in (
        (DEFAULT, ("lora", "cla"), (2, 8), (500, 2000), (1, 8), ("lora", "cla")),
        (STUDY, ("lora", "asym", "cla", "c3la"), (2, 8), (500, 1000, 2000), (1, 8),
         ("lora", "asym", "cla")),
    ):  # fmt: skip
        grid = [s for s in config.variants if s.subspace is None]
        got = {(s.method, s.rank, s.n_train, s.epochs) for s in grid}
        assert got == set(product(methods, ranks, sizes, epochs)) and len(grid) == len(got)
        assert {s.lr for s in grid} == {GRID_LR}
        assert all(s.chain == (2 if s.method == "c3la" else 1) for s in grid)
        sub = [s for s in config.variants if s.subspace is not None]
        assert [s.method for s in sub] == list(subs)
        assert {(s.n_train, s.subspace, s.qat_bits) for s in sub} == {(CERTIFIED_N, 500, 2)}
        assert len({s.name for s in config.variants}) == len(config.variants)
        assert config.test_first and config.layers == (5,)
        assert config.task_kwargs(grid[0])["n_train"] == grid[0].n_train


def test_test_first_split_is_shared_and_nested():
    from genbound.demo import tweets_split

    small_train, small_test = tweets_split(50, 30, seed=3, test_first=True)
    big_train, big_test = tweets_split(120, 30, seed=3, test_first=True)
    assert small_test.texts == big_test.texts
    assert torch.equal(small_test.labels, big_test.labels)
    assert big_train.texts[:50] == small_train.texts
    assert not set(big_train.texts) & set(big_test.texts)
    old_train, old_test = tweets_split(50, 30, seed=3)  # the default order is unchanged
    assert old_train.texts == tweets_split(50, 60, seed=3)[0].texts
    assert old_test.texts != small_test.texts
