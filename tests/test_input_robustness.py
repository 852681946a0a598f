"""Inputs at the edges: JSON that Python's parser rejects in unusual ways, arguments of the
wrong type reaching genbound's own functions, base models transformers cannot build, output
folders whose parent cannot be written, and sweeps whose runs would share a folder. Each is
a named error (exit 2) or handled, never an internal error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_run

from genbound import load_checkpoint
from genbound.cli.main import main
from genbound.errors import GenboundError
from genbound.report.batch import ReportJob, read_json, report_folder_names, run_report_job
from genbound.tasks.sampling import stratified_counts


def _edit_manifest(run, text: str) -> None:
    (run / "genbound.json").write_text(text)


def _cli_fails(capsys, argv, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ('{"variant": "cla", "n_train": ' + "7" * 5000 + "}", "Exceeds the limit"),
        ("[" * 100_000 + "]" * 100_000, "recursion"),
    ],
    ids=["5000-digit-integer", "deep-nesting"],
)
def test_json_python_cannot_parse_is_a_named_error(tmp_path, capsys, body, found):
    run = tiny_run(tmp_path)
    _edit_manifest(run, body)
    err = _cli_fails(capsys, ["inspect", str(run)], "genbound.json", "invalid JSON")
    assert found.lower() in err.lower()


def test_links_nested_past_the_recursion_limit_are_a_named_error(tmp_path, capsys):
    run = tiny_run(tmp_path)
    man = json.loads((run / "genbound.json").read_text())
    man["updates"]["x"]["link"] = "LINK"
    leaf = '{"kind": "selector", "B": "B", "indices": "i"}'
    depth = 450  # parses as JSON (900 containers); deeper than the checker can recurse
    link = '{"kind": "chain", "links": [' * depth + leaf + "]}" * depth
    _edit_manifest(run, json.dumps(man).replace('"LINK"', link))
    err = _cli_fails(capsys, ["inspect", str(run)], "genbound.json")
    assert "nested too deeply" in err or "recursion depth" in err  # the checker's or the parser's


def test_dora_lowrank_part_must_be_a_lowrank_link(tmp_path, capsys):
    run = tiny_run(tmp_path)
    man = json.loads((run / "genbound.json").read_text())
    man["updates"]["x"]["link"] = {
        "kind": "dora",
        "lowrank": {"kind": "selector", "B": "B", "indices": "i"},
        "magnitude": "B",
    }
    _edit_manifest(run, json.dumps(man))
    _cli_fails(capsys, ["inspect", str(run)], "[key 'updates.x.link.lowrank.kind']", '"selector"')


def test_genbound_task_given_arguments_of_the_wrong_type(tmp_path):
    run = tiny_run(
        tmp_path,
        data={"task": "genbound.tasks.hf_text:text_files", "kwargs": {"train": 5, "test": 6}},
    )
    with pytest.raises(GenboundError, match="text_files cannot take the arguments"):
        run_report_job(ReportJob(str(run), str(tmp_path / "rep")))
    assert not (tmp_path / "rep").exists()


def test_base_model_transformers_cannot_build(tmp_path, capsys):
    from helpers import random_texts

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    run = tiny_run(tmp_path)
    rows = random_texts(6, 0)
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(
                json.dumps({"text": t, "label": int(y)}) + "\n"
                for t, y in zip(rows.texts, rows.labels.tolist(), strict=True)
            )
        )
    from genbound.tasks.hf_text import text_files

    task = text_files(str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"))
    with pytest.raises(GenboundError, match=r"cannot load the base model.*ValueError"):
        task.__class__.build_model(
            type(task)(task.train, task.test, base_path=base), load_checkpoint(run)
        )


def test_out_in_a_parent_that_cannot_be_written_fails_before_the_work(
    tmp_path, capsys, monkeypatch
):
    """A report is written beside its folder and renamed in: the parent must be writable,
    even when the folder itself exists (and is writable)."""
    import os

    run = tiny_run(tmp_path)
    parent = tmp_path / "reports"
    (parent / "rep").mkdir(parents=True)
    real = os.access

    def access(path, mode, **kw):
        return False if os.path.abspath(path) == str(parent) else real(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(
        "genbound.report.batch.run_report_job",
        lambda *a, **k: pytest.fail("the report was computed before its folder was checked"),
    )
    _cli_fails(
        capsys,
        ["report", str(run), "--out", str(parent / "rep")],
        "cannot write the report folder",
        f"{parent} is not writable",
    )


def test_many_equal_classes_are_not_sampled_by_label_order():
    labels = np.repeat(np.arange(1000), 3)  # 1,000 classes of 3 examples: every remainder ties
    counts = stratified_counts(labels, 256, np.random.default_rng(0))
    assert sum(counts.values()) == 256 and set(counts.values()) == {0, 1}
    chosen = np.array([c for c, k in counts.items() if k])
    assert chosen.max() > 900 and chosen.min() < 100  # spread over the labels, not 0..255
    # without a generator ties go to the smaller label (deterministic, and biased)
    plain = stratified_counts(labels, 256)
    assert [c for c, k in plain.items() if k] == list(range(256))


def test_trainer_state_run_mean_loss_is_type_checked(tmp_path, capsys):
    from conftest import build_peft, tiny_bert

    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=2, target_modules=["query"]))
    state = {"global_step": 5, "log_history": [{"step": 5, "train_loss": "low"}]}
    (ad / "trainer_state.json").write_text(json.dumps(state))
    _cli_fails(capsys, ["inspect", str(ad)], "trainer_state.json", "train_loss")


def test_sweep_folder_names_never_coincide():
    names = ["a/b", "a__b", "c/checkpoint-1", "d/checkpoint-1"]
    folders = report_folder_names(names)
    assert len(set(folders)) == 4
    assert folders[2:] == ["c__checkpoint-1", "d__checkpoint-1"]  # unique names stay readable
    assert folders[0].startswith("a__b-") and folders[1].startswith("a__b-")
    assert report_folder_names(names) == folders  # the same run, the same folder


def test_a_report_json_that_is_not_an_object_is_not_reused(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]")
    assert read_json(tmp_path / "report.json") is None
    (tmp_path / "report.json").write_text("[" * 100_000)
    assert read_json(tmp_path / "report.json") is None


def test_no_sample_is_drawn_when_curvature_and_landscapes_are_not_wanted(monkeypatch):
    from test_curvature import mlp_objective

    from genbound.report.measures import measure_checkpoint

    obj, *_ = mlp_objective()

    class Task:
        n_train, num_labels, description = obj.num_examples, 3, "mlp"

        def objectives(self, ckpt):
            return obj, obj

    monkeypatch.setattr(
        "genbound.tasks.sampling.sample_objective",
        lambda *a, **k: pytest.fail("a sample was drawn for nothing"),
    )

    class Ckpt:
        def __init__(self):
            self.updates, self.n_train, self.base = {}, None, None

    m = measure_checkpoint(Ckpt(), task=Task(), parts=["gap"])
    assert m.gap is not None and m.curvature is None and not m.landscapes
