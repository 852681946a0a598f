"""The command line on bad input and on failures: one paragraph and exit 2 for the user's
errors, a short "internal error" paragraph with a log file (exit 1) for genbound's own, never
a traceback; checks made before any work; sweeps that finish despite a broken checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_peft, tiny_bert

from genbound.cli.main import main
from genbound.parts import PARTS


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


@pytest.fixture
def adapter(tmp_path):
    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=2, target_modules=["query"]))
    return ad


def _sweep(tmp_path, names=("a/checkpoint-1", "b/checkpoint-1")) -> Path:
    """A folder of PEFT checkpoints at ``names`` (paths relative to it)."""
    root = tmp_path / "sweep"
    for i, name in enumerate(names):
        _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=2, target_modules=["query"]), seed=i + 1)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ad), root / name)
    return root


# ---------------------------------------------------------------- fast answers, no torch
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["report", "--help"],
        ["report", "x", "--max-length", "0"],
        ["report", "x", "--device", "tpu:7"],
        ["report", "x", "--landscape-steps", "20"],
        ["report", "x", "--jobs", "0"],
        ["frobnicate"],
    ],
)
def test_help_version_and_argument_errors_do_not_import_torch(argv):
    code = (
        "import sys\nfrom genbound.cli.main import main\n"
        f"code = main({argv!r})\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1].startswith("NO-TORCH"), res.stdout + res.stderr
    expected = "0" if argv[-1] in ("--help", "--version") else "2"
    assert res.stdout.strip().endswith(expected)
    _no_traceback(res.stderr)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--max-length", "0", "expected a positive integer; found 0"),
        ("--device", "tpu:7", "expected cpu, cuda, cuda:N or mps; found 'tpu:7'"),
        ("--landscape-steps", "20", "4 k + 1"),
        ("--curvature-examples", "-3", "expected a positive integer; found -3"),
    ],
)
def test_bad_option_values_are_named(tmp_path, capsys, flag, value, words):
    assert main(["report", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genbound: error: genbound report: argument ")
    assert err.strip().count("\n") == 0, "one paragraph"
    assert flag in err and words in err
    _no_traceback(err)


# ---------------------------------------------------------------- user errors: exit 2
def test_report_on_a_mistyped_path(tmp_path, capsys):
    assert main(["report", str(tmp_path / "no-such-checkpoint")]) == 2
    err = capsys.readouterr().err
    assert "no-such-checkpoint" in err and "checkpoint not found" in err
    _no_traceback(err)


def _refuse_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the report was computed before its output was checked")

    monkeypatch.setattr("genbound.report.batch.run_report_job", boom)


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_or_is_under_a_file_fails_before_the_work(
    tmp_path, adapter, capsys, monkeypatch, where
):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "rep"
    _refuse_work(monkeypatch)
    assert main(["report", str(adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the report folder" in err and str(blocker) in err
    _no_traceback(err)


def test_sweep_out_under_a_file_fails_before_the_work(tmp_path, capsys, monkeypatch):
    root = _sweep(tmp_path)
    (tmp_path / "blocker").write_text("x")
    _refuse_work(monkeypatch)
    assert main(["report", str(root), "--out", str(tmp_path / "blocker" / "out")]) == 2
    assert "cannot write the report folder" in capsys.readouterr().err


def test_cache_that_is_a_file_fails_before_the_work(tmp_path, adapter, capsys, monkeypatch):
    cache = tmp_path / "cache-file"
    cache.write_text("x")
    monkeypatch.setenv("GENBOUND_CACHE", str(cache))
    _refuse_work(monkeypatch)
    assert main(["report", str(adapter), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "cache folder" in err and "GENBOUND_CACHE" in err and str(cache) in err
    _no_traceback(err)


def test_cuda_device_without_cuda(tmp_path, adapter, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _refuse_work(monkeypatch)
    assert main(["report", str(adapter), "--out", str(tmp_path / "r"), "--device", "cuda:0"]) == 2
    assert "--device cuda:0: expected a CUDA device; found none" in capsys.readouterr().err


# ---------------------------------------------------------------- internal errors: exit 1
def test_internal_error_prints_a_paragraph_and_logs_the_traceback(
    tmp_path, adapter, capsys, monkeypatch
):
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))

    def bug(*a, **k):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr("genbound.cli.tables.updates_table", bug)
    assert main(["inspect", str(adapter)]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "internal error: ZeroDivisionError: a bug deep inside" in err
    logs = list((tmp_path / "cache" / "logs").glob("genbound-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "a bug deep inside" in text and "inspect" in text


# ---------------------------------------------------------------- sweeps
def test_sweep_with_a_broken_checkpoint_reports_the_others(tmp_path, capsys):
    root = _sweep(tmp_path, ("a/checkpoint-1", "b/checkpoint-1", "c/checkpoint-1"))
    weights = root / "b/checkpoint-1/adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # truncated
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--only", "spectra"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "1 checkpoint(s) could not be reported" in err
    assert "b/checkpoint-1: " in err and "adapter_model.safetensors" in err
    # the others are reported, named by their path in the sweep, and compared
    assert "a/checkpoint-1: reported" in err and "c/checkpoint-1: reported" in err
    assert "b/checkpoint-1: FAILED" in err
    for name in ("a__checkpoint-1", "c__checkpoint-1"):
        assert (out / "reports" / name / "report.json").exists()
    assert not (out / "reports" / "b__checkpoint-1").exists()
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert json.dumps(sweep).count("checkpoint-1") >= 2
    assert (out / "sweep" / "sweep.md").exists()


def test_sweep_in_worker_processes_names_the_broken_checkpoint(tmp_path, capsys):
    root = _sweep(tmp_path, ("a/checkpoint-1", "b/checkpoint-1"))
    (root / "a/checkpoint-1/adapter_config.json").write_text("{not json")
    out = tmp_path / "out"
    capsys.readouterr()  # what building the checkpoints printed
    assert main(["report", str(root), "--out", str(out), "--only", "spectra", "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "a/checkpoint-1: " in err and "adapter_config.json" in err and "invalid JSON" in err
    assert len(err.splitlines()) < 12  # no remote traceback
    assert (out / "reports" / "b__checkpoint-1" / "report.json").exists()


def test_sweep_internal_failure_is_logged_and_exits_1(tmp_path, capsys, monkeypatch):
    import genbound.report.batch as batch

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    root = _sweep(tmp_path)
    real = batch.run_report_job

    def flaky(job, **kw):
        if job.name == "a/checkpoint-1":
            raise KeyError("internal bookkeeping")
        return real(job, **kw)

    monkeypatch.setattr(batch, "run_report_job", flaky)
    assert main(["report", str(root), "--out", str(tmp_path / "o"), "--only", "spectra"]) == 1
    err = capsys.readouterr().err
    _no_traceback(err)
    assert "a/checkpoint-1: internal error (KeyError: 'internal bookkeeping')" in err
    log = next((tmp_path / "cache" / "logs").glob("*.log"))
    assert str(log) in err and "Traceback" in log.read_text()
    assert (tmp_path / "o" / "reports" / "b__checkpoint-1" / "report.json").exists()


def test_symlink_loop_reports_each_checkpoint_once(tmp_path, capsys):
    root = _sweep(tmp_path, ("a/checkpoint-1", "b/checkpoint-1"))
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "a" / "again").symlink_to(root / "b", target_is_directory=True)
    out = tmp_path / "out"
    assert main(["report", str(root), "--out", str(out), "--only", "spectra"]) == 0
    err = capsys.readouterr().err
    assert err.count(": reported") == 2
    assert sorted(p.name for p in (out / "reports").iterdir()) == [
        "a__checkpoint-1",
        "b__checkpoint-1",
    ]


# ---------------------------------------------------------------- progress and settings
def test_stages_are_printed_when_output_is_not_a_terminal(tmp_path, adapter, capsys):
    from helpers import random_texts, tiny_bert_lora, tiny_bert_with_tokenizer

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, _ = tiny_bert_lora(tmp_path, base_dir, ["query"], n_train=None)
    paths = []
    for split, n in (("train", 12), ("test", 8)):
        data = random_texts(n, len(paths))
        p = tmp_path / f"{split}.jsonl"
        p.write_text(
            "".join(
                json.dumps({"text": t, "label": int(y)}) + "\n"
                for t, y in zip(data.texts, data.labels.tolist(), strict=True)
            )
        )
        paths.append(str(p))
    out = tmp_path / "rep"
    argv = ["report", str(ckpt.path), "--out", str(out), "--data", *paths]
    argv += ["--curvature-examples", "6", "--trace-products", "4", "--density-probes", "1"]
    argv += ["--density-steps", "5", "--landscape-steps", "5", "--seed", "3"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "genbound: empirical gap ..." in err and "genbound: empirical gap: done in" in err
    assert (
        "genbound: Hessian on 6 training examples: top eigenvalue (Lanczos), trace "
        "(Hutch++, 4 products), density (1 x 5 Lanczos steps): done in"
    ) in err
    assert "genbound: landscape slices: 2 x 5 losses on 6 training examples ..." in err
    assert "report.html" in captured.out
    doc = json.loads((out / "report.json").read_text())
    settings = doc["settings"]
    assert settings["curvature_examples"] == 6 and settings["trace_products"] == 4
    assert settings["density_probes"] == 1 and settings["density_steps"] == 5
    assert settings["landscape_steps"] == 5 and settings["seed"] == 3
    assert settings["base_svd"] == "compute" and settings["curvature_space"] == "merged"
    assert settings["parts"] == sorted(PARTS) and settings["device"] == "cpu"
    assert doc["curvature"]["examples"] == 6
    assert len(doc["landscapes"]["path"]["xs"]) == 5


def test_demo_jobs_must_be_positive(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path / "d"), "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs" in err and "found 0" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "runs").exists()  # refused before any training
