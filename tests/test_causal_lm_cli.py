"""``genbound report ADAPTER --base BASE --data TRAIN TEST`` on a PEFT causal-LM adapter:
the gap in nats per predicted token against plain transformers + peft, from .jsonl, .csv
and .txt files; bad input refused with the file, line and column named and no report
left behind; texts longer than --max-length cut, and the cut stated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import build_peft, tiny_bert
from lm_fixtures import (
    N_TEST,
    N_TRAIN,
    assert_decisions_well_posed,
    base_tokenizer,
    lm_bundle,
    reference,
    write_split,
)

from genbound.cli.main import main


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    return lm_bundle(tmp_path_factory, "llama")


def _argv(bundle, train, test, out, *extra) -> list[str]:
    return [
        "report",
        str(bundle.adapter),
        "--base",
        str(bundle.base),
        "--data",
        str(train),
        str(test),
        "--only",
        "gap",
        "--out",
        str(out),
        *extra,
    ]


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


def _check_split(split: dict, ref) -> None:
    """A split of report.json's gap against the plain per-token reference."""
    assert_decisions_well_posed(ref)
    tokens = np.concatenate([r.losses for r in ref])
    errors = np.concatenate([r.errors for r in ref])
    assert split["n"] == len(ref)
    assert split["n_tokens"] == tokens.size == sum(len(r.ids) - r.start for r in ref)
    assert split["loss"] == pytest.approx(tokens.mean(), rel=1e-5)
    assert split["error"] == pytest.approx(errors.mean(), rel=1e-12)
    assert split["unit_loss"] == pytest.approx(np.mean([r.losses.mean() for r in ref]), rel=1e-5)


# ---------------------------------------------------------------- the report
@pytest.mark.parametrize(
    ("ext", "form"), [("jsonl", "text"), ("csv", "pair"), ("jsonl", "pair"), ("txt", "text")]
)
def test_report_gap_of_a_causal_lm(llama, tmp_path, capsys, ext, form):
    train = write_split(tmp_path, "train", llama.train_rows, ext)
    test = write_split(tmp_path, "test", llama.test_rows, ext)
    extra = ["--prompt-column", "prompt", "--response-column", "response"] if form == "pair" else []
    out = tmp_path / "rep"
    assert main(_argv(llama, train, test, out, *extra)) == 0
    assert "report written to" in capsys.readouterr().out
    doc = json.loads((out / "report.json").read_text())
    gap = doc["gap"]
    assert gap["loss_unit"] == "nats/token" and gap["unit"] == "texts"
    assert gap["weight_unit"] == "predicted tokens"
    assert gap["loss_name"] == "next-token cross-entropy"
    assert gap["error_name"] == "top-1 next-token error"
    assert gap["train"]["n"] == N_TRAIN and gap["test"]["n"] == N_TEST
    _check_split(gap["train"], reference(llama, llama.train_rows, form))
    _check_split(gap["test"], reference(llama, llama.test_rows, form))
    assert gap["loss_gap"] == pytest.approx(gap["test"]["loss"] - gap["train"]["loss"], abs=1e-12)
    assert doc["data"]["task"].startswith("causal language modelling")
    assert doc["skipped"] == {}


def test_prompt_response_pairs_predict_fewer_tokens(llama, tmp_path, capsys):
    """The pairs' n_tokens: the whole text's predicted tokens less the prompt's words, each
    counted from the tokenizer."""
    tok = base_tokenizer(llama)
    out = tmp_path / "rep"
    extra = ["--prompt-column", "prompt", "--response-column", "response"]
    assert main(_argv(llama, llama.train_file, llama.test_file, out, *extra)) == 0
    split = json.loads((out / "report.json").read_text())["gap"]["train"]
    want = 0
    for r in llama.train_rows:
        words = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        want += len(tok(r["prompt"] + r["response"])["input_ids"]) - 1 - len(words)
    assert split["n_tokens"] == want


# ---------------------------------------------------------------- bad input
def _lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


BAD = {
    # name: (which file, its lines, extra flags, words the message holds)
    "not an object": (
        "train",
        [{"text": "a fine day"}, "[1, 2]"],
        [],
        ["line 2", "not a JSON object"],
    ),
    "missing text column": (
        "train",
        [{"text": "a fine day"}, {"body": "no text here"}],
        [],
        ["line 2", "'text'", "missing text"],
    ),
    "missing response column": (
        "test",
        [{"prompt": "a fine", "answer": " day"}],
        ["--prompt-column", "prompt", "--response-column", "response"],
        ["'response'", "column missing"],
    ),
    "empty text": (
        "test",
        [{"text": "a fine day"}, {"text": "so so"}, {"text": "   "}],
        [],
        ["line 3", "'text'", "empty text"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_refused_and_nothing_is_written(llama, tmp_path, capsys, case):
    which, rows, extra, words = BAD[case]
    good = {"train": llama.train_file, "test": llama.test_file}
    bad = _lines(tmp_path / f"bad-{which}.jsonl", rows)
    files = {**good, which: bad}
    runs = tmp_path / "runs"
    runs.mkdir()
    assert main(_argv(llama, files["train"], files["test"], runs / "rep", *extra)) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    (message,) = [x for x in err.splitlines() if x.startswith("genbound: error: ")]
    assert str(bad) in message
    for w in words:
        assert w in message, (w, message)
    assert list(runs.iterdir()) == []  # no report folder, no half-written sibling


def test_bad_data_keeps_an_earlier_report(llama, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(_argv(llama, llama.train_file, llama.test_file, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = _lines(tmp_path / "bad.jsonl", [{"text": "fine"}, "[1, 2]"])
    assert main(_argv(llama, bad, llama.test_file, out, "--force")) == 2
    assert "line 2" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "rep"]


def test_classifier_checkpoint_with_objective_causal_lm_is_refused(llama, tmp_path, capsys):
    _, adapter, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query"], task_type="SEQ_CLS")
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["report", str(adapter), "--data", str(llama.train_file), str(llama.test_file)]
    argv += ["--objective", "causal_lm", "--only", "gap", "--out", str(runs / "rep")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    _no_traceback(err)
    assert str(adapter) in err and "--objective causal_lm, but" in err
    assert "classification" in err
    assert list(runs.iterdir()) == []


# ---------------------------------------------------------------- texts longer than L
def test_texts_longer_than_max_length_are_cut_and_the_cut_is_stated(llama, tmp_path):
    """Run as a user runs it (a separate process, genbound's own logging set-up): the
    warning names each file and how many of its texts were cut, once; the report counts
    the first L tokens of each text."""
    length = 20  # some texts of each split are longer, some not
    tok = base_tokenizer(llama)
    out = tmp_path / "rep"
    cmd = [str(Path(sys.executable).with_name("genbound"))]
    cmd += _argv(llama, llama.train_file, llama.test_file, out, "--max-length", str(length))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    _no_traceback(res.stderr)
    doc = json.loads((out / "report.json").read_text())
    gap = doc["gap"]
    for name, rows, path in (
        ("train", llama.train_rows, llama.train_file),
        ("test", llama.test_rows, llama.test_file),
    ):
        lengths = [len(tok(r["text"])["input_ids"]) for r in rows]
        cut = sum(n > length for n in lengths)
        assert 0 < cut < len(rows)
        line = (
            f"{path}: {cut} of {len(rows)} texts are longer than max_length = {length} tokens "
            "and were cut"
        )
        assert res.stderr.count(line) == 1, res.stderr
        assert doc["warnings"].count(line) == 1, doc["warnings"]  # kept with the report
        assert gap[name]["n_tokens"] == sum(min(n, length) - 1 for n in lengths)
        _check_split(gap[name], reference(llama, rows, "text", max_length=length))


def test_report_names_the_max_length_in_words(llama, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = _argv(llama, llama.train_file, llama.test_file, out, "--max-length", "20")
    assert main(argv) == 0
    task = json.loads((out / "report.json").read_text())["data"]["task"]
    assert "20 tokens" in task and "'s tokens" not in task, task
