"""One sweep on every executor: this process (``--jobs 1``), a local process pool, a real Dask
cluster (a scheduler and two worker processes on 127.0.0.1) and submitit's local stand-in
for SLURM give the same report.json documents, down to the last bit, with a user measure
imported in the workers; a broken checkpoint or a dying worker fails only its own
checkpoints; every report says who computed it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import randomize_adapters
from helpers import random_texts, tiny_bert_with_tokenizer

from genbound.cli.main import main

NAMES = [f"run{i}/checkpoint-5" for i in range(3)]
FOLDERS = [n.replace("/", "__") for n in NAMES]
#: Every part, curvature and landscapes on a sample small enough for seconds.
OPTIONS = ["--curvature-examples", "6", "--trace-products", "4", "--density-probes", "1"]
OPTIONS += ["--density-steps", "5", "--landscape-steps", "5", "--seed", "2"]
MEASURE = '''
def weight_norm(checkpoint):
    """sum of ||dW||_F over the updates"""
    return sum(float(u.delta().norm()) for u in checkpoint.updates.values())
'''
#: Bookkeeping that differs between runs that computed the same numbers.
NOT_NUMBERS = ("provenance", "timings_s", "cache_hits", "cache_misses")


def _without(doc, keys=NOT_NUMBERS):
    if isinstance(doc, dict):
        return {k: _without(v, keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [_without(v, keys) for v in doc]
    return doc


def _report(out: Path, folder: str) -> dict:
    return json.loads((out / "reports" / folder / "report.json").read_text())


class Sweep:
    """Three PEFT LoRAs of one tiny BERT, labelled texts, a user measure on the path of this
    process and of the processes it starts, and the reports of ``--jobs 1``."""

    def __init__(self, tmp: Path):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification

        base = tiny_bert_with_tokenizer(tmp)
        self.root = tmp / "sweep"
        for i, (r, targets) in enumerate([(2, ["query"]), (3, ["query", "value"]), (1, ["value"])]):
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
            pm = get_peft_model(
                model, LoraConfig(r=r, target_modules=targets, modules_to_save=["classifier"])
            )
            randomize_adapters(pm, seed=i, scale=0.3 * (i + 1))
            pm.save_pretrained(self.root / NAMES[i])
        files = []
        for split, n, seed in (("train", 24, 5), ("test", 16, 6)):
            data = random_texts(n, seed)
            files.append(tmp / f"{split}.jsonl")
            files[-1].write_text(
                "".join(
                    json.dumps({"text": t, "label": int(y)}) + "\n"
                    for t, y in zip(data.texts, data.labels.tolist(), strict=True)
                )
            )
        self.plugins = tmp / "plugins"
        self.plugins.mkdir()
        (self.plugins / "sweep_measures.py").write_text(MEASURE)
        self.args = ["--data", *map(str, files), *OPTIONS]
        self.args += ["--measure", "sweep_measures:weight_norm"]
        self.reference = tmp / "jobs1"

    def argv(self, out: Path, *extra: str, root: Path | None = None) -> list[str]:
        return ["report", str(root or self.root), "--out", str(out), *self.args, *extra]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    s = Sweep(tmp_path_factory.mktemp("executors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(s.plugins))  # this process; started processes read PYTHONPATH
        mp.setenv("PYTHONPATH", os.pathsep.join([str(s.plugins), os.environ.get("PYTHONPATH", "")]))
        assert main(s.argv(s.reference)) == 0
        yield s


@pytest.fixture(scope="module")
def cluster(sweep):
    """A Dask scheduler and two single-threaded worker processes on 127.0.0.1; a task whose
    worker dies is not retried (so a test can kill one quickly)."""
    distributed = pytest.importorskip("distributed")
    import dask

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as c,
    ):
        yield c


def _same_numbers(sweep: Sweep, out: Path) -> None:
    """Every report and the comparison of ``out`` equal ``--jobs 1``'s, bookkeeping aside."""
    for folder in FOLDERS:
        assert _without(_report(out, folder)) == _without(_report(sweep.reference, folder)), folder
    got = json.loads((out / "sweep" / "sweep.json").read_text())
    want = json.loads((sweep.reference / "sweep" / "sweep.json").read_text())
    assert got == want


def _check_provenance(doc: dict, executor: str) -> dict:
    from genbound import __version__

    p = doc["provenance"]
    assert set(p) == {
        "genbound_version", "host", "pid", "executor", "worker", "started", "finished",
    }  # fmt: skip
    assert p["executor"] == executor and p["genbound_version"] == __version__
    assert p["host"] == socket.gethostname() and isinstance(p["pid"], int)
    started, finished = (datetime.fromisoformat(p[k]) for k in ("started", "finished"))
    assert started.utcoffset().total_seconds() == 0 and started <= finished
    return p


def test_reference_reports_hold_the_user_measure_and_say_who_computed_them(sweep):
    from genbound import load_checkpoint

    for name, folder in zip(NAMES, FOLDERS, strict=True):
        doc = _report(sweep.reference, folder)
        ckpt = load_checkpoint(sweep.root / name)
        want = sum(float(u.delta().norm()) for u in ckpt.updates.values())
        assert doc["measures"]["weight_norm"] == pytest.approx(want, rel=1e-12)
        assert doc["curvature"]["examples"] == 6 and doc["gap"] is not None
        p = _check_provenance(doc, "local")
        assert p["worker"] == "main" and p["pid"] == os.getpid()
        assert "provenance" not in doc["settings"]


def test_process_pool_gives_the_same_numbers(sweep, tmp_path):
    out = tmp_path / "pool"
    assert main(sweep.argv(out, "--jobs", "2")) == 0
    _same_numbers(sweep, out)
    for folder in FOLDERS:
        p = _check_provenance(_report(out, folder), "local")
        assert p["worker"] == f"pool-{p['pid']}" and p["pid"] != os.getpid()


def test_dask_cluster_gives_the_same_numbers_and_reuse_keeps_provenance(
    sweep, cluster, tmp_path, capsys
):
    out = tmp_path / "dask"
    argv = sweep.argv(out, "--executor", "dask", "--scheduler", cluster.scheduler_address)
    assert main(argv) == 0
    assert "3 checkpoints (3 reported now, 0 reused)" in capsys.readouterr().out
    _same_numbers(sweep, out)
    workers = {n.worker_address for n in cluster.workers.values()}
    before = {}
    for folder in FOLDERS:
        before[folder] = p = _check_provenance(_report(out, folder), "dask")
        assert p["worker"] in workers and p["pid"] != os.getpid()
    # the same sweep again, here: every report reused, with the provenance it was written with
    assert main(sweep.argv(out)) == 0
    assert "(0 reported now, 3 reused)" in capsys.readouterr().out
    assert {f: _report(out, f)["provenance"] for f in FOLDERS} == before


def test_slurm_through_submitit_gives_the_same_numbers_in_one_job_per_base(sweep, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    assert main(sweep.argv(out, "--executor", "slurm", "--slurm-local")) == 0
    _same_numbers(sweep, out)
    jobs = {p.name.split("_")[0] for p in (out / "slurm").glob("*_submitted.pkl")}
    workers = {_check_provenance(_report(out, f), "slurm")["worker"] for f in FOLDERS}
    # one base model: one job computed the three reports
    assert len(jobs) == 1 and workers == jobs


def test_one_checkpoint_on_the_cluster(sweep, cluster, tmp_path, capsys):
    out = tmp_path / "one"
    argv = sweep.argv(out, "--executor", "dask", "--scheduler", cluster.scheduler_address)
    argv[1] = str(sweep.root / NAMES[2])
    assert main(argv) == 0
    assert f"report written to {out}/report.html" in capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    assert _check_provenance(doc, "dask")["pid"] != os.getpid()
    assert _without(doc) == _without(_report(sweep.reference, FOLDERS[2]))


def _broken_copy(sweep: Sweep, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(sweep.root, root)
    weights = root / NAMES[1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # truncated
    return root


def _executor_args(kind: str, cluster_fixture) -> list[str]:
    if kind == "dask":
        return ["--executor", "dask", "--scheduler", cluster_fixture.scheduler_address]
    pytest.importorskip("submitit")
    return ["--executor", "slurm", "--slurm-local"]


@pytest.mark.parametrize("kind", ["dask", "slurm"])
def test_a_broken_checkpoint_fails_alone(sweep, request, tmp_path, capsys, kind):
    cluster = request.getfixturevalue("cluster") if kind == "dask" else None
    root, out = _broken_copy(sweep, tmp_path), tmp_path / "out"
    argv = [*sweep.argv(out, root=root), "--only", "spectra", *_executor_args(kind, cluster)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "1 checkpoint(s) could not be reported" in err
    assert f"{NAMES[1]}: " in err and "adapter_model.safetensors" in err
    assert f"{NAMES[1]}: FAILED" in err
    for i in (0, 2):
        assert f"{NAMES[i]}: reported" in err
        assert _report(out, FOLDERS[i])["provenance"]["executor"] == kind
    assert not (out / "reports" / FOLDERS[1]).exists()
    rows = json.loads((out / "sweep" / "sweep.json").read_text())["rows"]
    assert [r["run"] for r in rows] == [FOLDERS[0], FOLDERS[2]]


@pytest.mark.parametrize("kind", ["dask", "slurm"])
def test_a_dying_worker_fails_the_checkpoints_it_held(
    sweep, request, tmp_path, capsys, monkeypatch, kind
):
    """The worker process running run1 exits (as if killed for lack of memory): Dask gives
    up on it (KilledWorker), submitit finds the job dead; the checkpoints of that task fail
    by name, the others are reported, the command exits 1 (not the input's fault)."""
    cluster = request.getfixturevalue("cluster") if kind == "dask" else None
    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))

    def dying(docs, executor):  # sent by value: it runs in the worker
        import os

        from genbound.sweep.executors import run_group

        if any(d["name"] == "run1/checkpoint-5" for d in docs):
            os._exit(3)
        return run_group(docs, executor)

    monkeypatch.setattr("genbound.sweep.executors.run_group", dying)
    if kind == "slurm":  # submitit waits 15 s for a dead job's result file (slow NFS); not here
        monkeypatch.setattr("submitit.core.core.Job._results_timeout_s", 1)
    out = tmp_path / "out"
    argv = [*sweep.argv(out), "--only", "spectra", *_executor_args(kind, cluster), "--jobs", "3"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    died = "the Dask worker running it died" if kind == "dask" else "SLURM job "
    assert f"{NAMES[1]}: internal error ({died}" in err
    reported = [n for n in NAMES if f"{n}: reported" in err]
    assert reported and NAMES[1] not in reported
    for name in reported:
        assert (out / "reports" / name.replace("/", "__") / "report.json").exists()


def test_the_python_example_of_the_docs_runs(sweep, cluster, tmp_path, monkeypatch):
    """docs/sweeps.md's Python example as written, on this sweep (as ./runs) and on the test
    cluster (its address for the example's)."""
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    section = docs.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.+?)\n```", section, re.S).group(1)
    assert code.count("tcp://10.0.0.5:8786") == 1
    code = code.replace("tcp://10.0.0.5:8786", cluster.scheduler_address)
    (tmp_path / "runs").symlink_to(sweep.root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(code, "docs/sweeps.md", "exec"), env)
    result = env["result"]
    assert [o.name for o in result.outcomes] == NAMES and not result.failed
    out = tmp_path / "sweep-out"
    for folder in FOLDERS:
        doc = _report(out, folder)
        assert doc["settings"]["parts"] == ["mi", "spectra"]
        assert doc["provenance"]["executor"] == "dask"
        # no data, so no N for the MI bound: the spectra are the reference's
        assert doc["updates"] == _report(sweep.reference, folder)["updates"]
        assert doc["bounds"]["mi"] is None and "N" in doc["skipped"]["mi"]
    assert (out / "sweep" / "sweep.json").exists()


# ---------------------------------------------------------------- errors before any work
def test_unreachable_scheduler_is_named(sweep, tmp_path, capsys):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out"
    argv = [*sweep.argv(out), "--executor", "dask", "--scheduler", address]
    assert main([*argv, "--scheduler-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--scheduler {address}: expected a Dask scheduler answering there within 1 s" in err
    assert "Traceback" not in err and not (out / "reports").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--executor", "dask"], "--executor dask: expected --scheduler ADDRESS"),
        (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler: expected --executor dask"),
        (["--slurm-partition", "gpu"], "--slurm-partition: expected --executor slurm"),
        (["--executor", "dask", "--slurm-gpus", "1"], "--slurm-gpus: expected --executor slurm"),
    ],
)
def test_executor_options_that_do_not_fit(sweep, tmp_path, capsys, extra, words):
    assert main([*sweep.argv(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out" / "reports").exists()


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("distributed", ["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786"]),
        ("submitit", ["--executor", "slurm", "--slurm-local"]),
    ],
)
def test_missing_executor_package_says_how_to_install_it(
    sweep, tmp_path, capsys, monkeypatch, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main([*sweep.argv(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert f"expected the Python package '{module}'" in err
    kind = "dask" if module == "distributed" else "slurm"
    assert f"pip install 'genbound[{kind}]'" in err and "Traceback" not in err


def test_slurm_without_sbatch_is_named(sweep, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    assert main([*sweep.argv(tmp_path / "out"), "--executor", "slurm"]) == 2
    assert "expected SLURM's sbatch command on this machine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["report", "x", "--measure", "no_colon"], "expected MODULE:ATTR"),
        (["report", "x", "--measure", "mod:1bad"], "expected MODULE:ATTR"),
        (["report", "x", "--executor", "spark"], "invalid choice: 'spark'"),
        (["report", "x", "--slurm-time", "0"], "whole number of minutes"),
        (["report", "x", "--slurm-mem", "lots"], "number of GB"),
        (["report", "--help"], "--scheduler"),
    ],
)
def test_argument_errors_answer_without_torch_or_dask(argv, words):
    code = (
        "import sys\nfrom genbound.cli.main import main\n"
        f"code = main({argv!r})\n"
        "heavy = [m for m in ('torch', 'distributed', 'dask', 'submitit') if m in sys.modules]\n"
        "print('HEAVY', heavy, code)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == f"HEAVY [] {0 if '--help' in argv else 2}"
    assert words in res.stdout + res.stderr and "Traceback" not in res.stderr
