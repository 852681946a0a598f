"""Sweep jobs as data: a ReportJob's JSON round trip and the keys it refuses; groups of jobs
that share a base model; the per-process memo of base-model files, which never serves a
file that changed."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import tiny_run
from safetensors.torch import save_file

from genbound.errors import GenboundError
from genbound.options import ReportOptions
from genbound.report.batch import ReportJob, job_settings_key, run_report_job
from genbound.sweep.groups import base_reference, plan_groups


def _job(**kw) -> ReportJob:
    return ReportJob("runs/a", "out/reports/a", **kw)


def test_a_job_survives_json():
    job = ReportJob(
        "runs/a",
        "out/a",
        task={"task": "genbound.tasks.hf_text:text_files", "kwargs": {"train": "t", "test": "s"}},
        options=ReportOptions(parts=("spectra", "mi"), seed=4, measures=("m.x:f",)),
        base="base",
        adapter="second",
        force=True,
        trust_code=True,
        name="a/checkpoint-1",
    )
    doc = json.loads(json.dumps(job.to_json()))  # through text, as a cluster sends it
    assert doc["options"]["parts"] == ["mi", "spectra"] and doc["options"]["seed"] == 4
    again = ReportJob.from_json(doc)
    assert again == job and isinstance(again.options, ReportOptions)
    assert job_settings_key(again) == job_settings_key(job)


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"checkpoint": "a", "out": "b", "optoins": {}}, "unknown key(s) ['optoins']"),
        ({"checkpoint": "a", "out": "b", "options": {"sed": 1}}, "unknown option(s) ['sed']"),
        ({"checkpoint": "a", "out": "b", "options": {"seed": -1}}, "option 'seed'"),
        ({"checkpoint": "a", "out": "b", "force": "yes"}, "[key 'force']: expected true or false"),
        ({"checkpoint": "a", "out": "b", "task": "mod:fn"}, "[key 'task']"),
        ({"checkpoint": "a"}, "missing key(s) ['out']"),
        (["a", "b"], "expected a JSON object; found list"),
    ],
)
def test_a_bad_job_document_names_its_key(doc, words):
    with pytest.raises(GenboundError) as info:
        ReportJob.from_json(doc, where="jobs.json [job 3]")
    assert str(info.value).startswith("jobs.json [job 3]") and words in str(info.value)


def test_options_given_as_a_mapping_are_checked_where_the_job_is_made():
    assert _job(options={"seed": 3}).options == ReportOptions(seed=3)
    with pytest.raises(GenboundError, match=r"report job options: unknown option\(s\) \['sead'\]"):
        _job(options={"sead": 3})
    with pytest.raises(GenboundError, match=r"report job \[key 'options'\]"):
        _job(options=[("seed", 3)])


def test_provenance_is_not_a_setting():
    """Two reports with the same settings share a settings key whoever computes them, and
    any option changes it."""
    assert job_settings_key(_job()) == job_settings_key(_job(name="other", force=True))
    assert job_settings_key(_job()) != job_settings_key(_job(options=ReportOptions(seed=1)))
    measured = _job(options=ReportOptions(measures=("m:f",)))
    assert job_settings_key(measured) != job_settings_key(_job())


def test_a_data_free_report_records_its_provenance(tmp_path):
    run = tiny_run(tmp_path)
    folder, computed = run_report_job(
        ReportJob(run, tmp_path / "rep", options=ReportOptions(parts=("spectra",))),
        executor="dask",
        worker="tcp://10.0.0.5:40000",
    )
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert computed and folder == str(tmp_path / "rep")
    p = doc["provenance"]
    assert (p["executor"], p["worker"], p["pid"]) == ("dask", "tcp://10.0.0.5:40000", os.getpid())
    assert p["started"] <= p["finished"]  # ISO 8601 in UTC: text order is time order


# ---------------------------------------------------------------- groups by base model
def _peft(root, name, base):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return ReportJob(str(folder), str(root / "out" / name))


def test_groups_never_mix_base_models_and_fill_the_slots(tmp_path):
    jobs = [_peft(tmp_path, f"c{i}", "base-A" if i % 3 else "base-B") for i in range(9)]
    jobs.append(ReportJob(str(tmp_path / "missing"), str(tmp_path / "out" / "m")))
    bases = [base_reference(j) for j in jobs]
    assert bases[:4] == ["base-B", "base-A", "base-A", "base-B"] and bases[-1] is None
    for slots in (1, 2, 4, 10, 50):
        groups = plan_groups(jobs, slots)
        assert sorted(i for g in groups for i in g) == list(range(10))  # each job once
        for g in groups:
            assert len({bases[i] for i in g}) == 1 and g == sorted(g)
        assert max(map(len, groups)) <= max(1, 10 // slots)
        assert len(groups) >= min(slots, 10)
    # one slot: one group per base model, and the job without a known base on its own
    assert plan_groups(jobs, 1) == [[0, 3, 6], [1, 2, 4, 5, 7, 8], [9]]
    # 3 slots: groups of at most 3, sizes within a base differing by at most one
    assert plan_groups(jobs, 3) == [[0, 3, 6], [1, 2, 4], [5, 7, 8], [9]]
    assert plan_groups(jobs, 4) == [[0], [3, 6], [1, 2], [4, 5], [7, 8], [9]]


def test_base_given_on_the_command_line_wins_and_run_folders_are_read(tmp_path):
    job = _peft(tmp_path, "p", "recorded")
    assert base_reference(ReportJob(job.checkpoint, job.out, base=str(tmp_path))) == str(
        tmp_path.resolve()
    )
    run = tiny_run(tmp_path, base_model={"path": "/models/x"})
    assert json.loads(base_reference(ReportJob(str(run), "o"))) == {"path": "/models/x"}


# ---------------------------------------------------------------- the base-model memo
def test_an_unchanged_base_is_opened_once_and_a_changed_one_again(tmp_path, monkeypatch):
    import time

    from genbound.checkpoint import base as base_module
    from genbound.checkpoint.base import BaseModel, clear_base_cache

    clear_base_cache()
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2, 3)}, path)
    # just written: not memoized (a rewrite within the clock's tick could keep its times)
    assert BaseModel(path)._files[path] is not BaseModel(path)._files[path]
    monkeypatch.setattr(base_module, "FRESH_SECONDS", 0.05)  # ext4 and tmpfs tick in ms
    time.sleep(0.1)
    first, second = BaseModel(path), BaseModel(path)
    assert first._files[path] is second._files[path]  # one opened file for both
    fingerprint = first.fingerprint
    assert second.fingerprint == fingerprint
    stat = path.stat()
    save_file({"w": torch.full((2, 3), 2.0)}, path)  # same size, same names, new bytes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    time.sleep(0.1)
    third = BaseModel(path)
    assert third._files[path] is not first._files[path]
    assert torch.equal(third.tensor("w"), torch.full((2, 3), 2.0))
    assert third.fingerprint != fingerprint
    assert BaseModel(path)._files[path] is third._files[path]
    clear_base_cache()
    assert BaseModel(path)._files[path] is not third._files[path]


def test_tensors_of_a_memoized_torch_file_are_the_caller_s_own(tmp_path, monkeypatch):
    import time

    from genbound.checkpoint import base as base_module
    from genbound.checkpoint.base import BaseModel, clear_base_cache

    clear_base_cache()
    monkeypatch.setattr(base_module, "FRESH_SECONDS", 0.05)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, path)
    time.sleep(0.1)
    first, second = BaseModel(path), BaseModel(path)
    assert first._files[path] is second._files[path]
    first.tensor("w").mul_(0)  # a caller that writes into what it got
    assert torch.equal(second.tensor("w"), torch.arange(6.0).reshape(2, 3))
    clear_base_cache()
