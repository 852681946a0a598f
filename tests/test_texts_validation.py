"""Labelled-text files as ``--data`` reads them: labels compared by value, class indices or
names, a class-count limit, and a named error (exit 2, no traceback, no report) for every
malformed file, setting, tokenizer folder or head that does not match the data."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import WORDS, tiny_bert_lora, tiny_bert_with_tokenizer

import genbound.tasks.texts as texts_module
from genbound.cli.main import main
from genbound.errors import GenboundError
from genbound.tasks.hf_text import TextClassificationTask, load_tokenizer, text_files
from genbound.tasks.texts import MAX_CLASSES, read_labelled


def _csv(path, rows, header=("text", "label")):
    """Write ``rows`` (lists of fields) under ``header`` as CSV; returns the path."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _write(path, content):
    path.write_text(content)
    return path


def _jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def _rows(labels):
    """One short text per label, cycling through the tokenizer's words."""
    return [[WORDS[i % len(WORDS)], y] for i, y in enumerate(labels)]


def _read(path, **kw):
    return read_labelled(path, text_column="text", label_column="label", **kw)


# ------------------------------------------------------------------ labels and classes
def test_small_integer_labels_are_class_indices_gaps_included(tmp_path):
    data = _read(_csv(tmp_path / "a.csv", _rows([0, 2, 1, 2])))
    assert data.label_names == ("0", "1", "2") and data.labels.tolist() == [0, 2, 1, 2]
    data = _read(_csv(tmp_path / "b.csv", _rows([0, 2, 2])))
    assert data.label_names == ("0", "1", "2") and data.labels.tolist() == [0, 2, 2]


def test_a_huge_integer_label_is_a_name_not_a_billion_classes(tmp_path):
    data = _read(_csv(tmp_path / "a.csv", _rows([0, 1000000000, 1, 0])))
    assert data.label_names == ("0", "1", "1000000000")
    assert data.labels.tolist() == [0, 2, 1, 0]
    # negative and fractional labels are names too, in numeric order before texts
    data = _read(_csv(tmp_path / "b.csv", _rows(["-1", "0.5", "pos", "2", "-1"])))
    assert data.label_names == ("-1", "0.5", "2", "pos")
    assert data.labels.tolist() == [0, 1, 3, 2, 0]


def test_more_distinct_labels_than_the_limit_is_named(tmp_path):
    path = _csv(tmp_path / "many.csv", _rows([f"c{i}" for i in range(MAX_CLASSES + 1)]))
    with pytest.raises(GenboundError) as exc:
        _read(path)
    msg = str(exc.value)
    assert str(path) in msg and "'label'" in msg and "too many classes" in msg
    assert f"{MAX_CLASSES + 1:,}" in msg and f"at most {MAX_CLASSES:,}" in msg
    # exactly the limit is allowed
    ok = _read(_csv(tmp_path / "ok.csv", _rows([f"c{i}" for i in range(MAX_CLASSES)])))
    assert len(ok.label_names) == MAX_CLASSES


def test_labels_are_compared_by_value_across_files(tmp_path):
    train = _csv(tmp_path / "train.csv", _rows([0, 1, 2, 1]))
    test = _jsonl(
        tmp_path / "test.jsonl",
        [{"text": "good", "label": 1.0}, {"text": "bad", "label": "2"}, {"text": "ok", "label": 0}],
    )
    task = text_files(str(train), str(test))
    assert task.train.label_names == task.test.label_names == ("0", "1", "2")
    assert task.test.labels.tolist() == [1, 2, 0]
    # names given: a label is matched to them by value, in their order
    data = _read(_csv(tmp_path / "r.csv", _rows(["3", "1.0", "2"])), label_names=["1", "2", "3"])
    assert data.labels.tolist() == [2, 0, 1] and data.label_names == ("1", "2", "3")
    with pytest.raises(GenboundError, match=r"--label-names: expected distinct.*'1' and '1\.0'"):
        text_files(str(train), str(test), label_names=["0", "1", "1.0"])


def test_a_test_label_the_training_file_lacks_is_named(tmp_path):
    train = _csv(tmp_path / "train.csv", _rows(["neg", "pos", "neg"]))
    test = _csv(tmp_path / "test.csv", _rows(["pos", "neu", "meh"]))
    with pytest.raises(GenboundError) as exc:
        text_files(str(train), str(test))
    msg = str(exc.value)
    assert msg.startswith(f"{test} [key 'label']: unknown labels")
    assert "['meh', 'neu']" in msg and f"the classes of the training file {train}" in msg


@pytest.mark.parametrize(
    ("name", "content", "where", "found"),
    [
        ("empty.csv", "text,label\ngood,1\nbad,\nfine,0\n", "data row 2 (line 3)", "empty field"),
        ("short.csv", "text,label\ngood,1\nfine,0\nbad\n", "data row 3 (line 4)", "found none"),
        ("blank.csv", 'text,label\n"a\nb",1\n\nbad, \n', "data row 2 (line 5)", "empty field"),
        ("null.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', "line 2", ""),
        ("absent.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b"}\n', "line 3", ""),
    ],
)
def test_a_missing_label_is_named_with_its_row(tmp_path, name, content, where, found):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GenboundError) as exc:
        _read(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path} [key 'label']: missing label in {where}"), msg
    assert found in msg


def test_jsonl_rows_that_are_not_objects_or_lack_the_text(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a", "label": 1}\n["b", 0]\n')
    with pytest.raises(
        GenboundError, match=r"list\.jsonl \[key 'line 2'\]: not a JSON object.*array"
    ):
        _read(path)
    path = tmp_path / "notext.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"label": 0}\n')
    with pytest.raises(
        GenboundError, match=r"notext\.jsonl \[key 'text'\]: missing text in line 2"
    ):
        _read(path)
    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": "a", "label": [1]}\n')
    with pytest.raises(GenboundError, match=r"label not a string or number in line 1"):
        _read(path)


def test_csv_fields_beyond_the_module_limit_and_within_the_cap(tmp_path, monkeypatch):
    long_text = " ".join(["good"] * 40_000)  # 199,999 characters: over csv's default 131,072
    data = _read(_csv(tmp_path / "long.csv", [["bad", 0], [long_text, 1]]))
    assert data.texts[1] == long_text and data.labels.tolist() == [0, 1]
    assert csv.field_size_limit() == 131_072  # the process-wide limit is restored
    monkeypatch.setattr(texts_module, "MAX_FIELD_CHARS", 1000)
    path = _csv(tmp_path / "over.csv", [["bad", 0], ["fine", 1], ["x" * 1001, 1]])
    with pytest.raises(GenboundError) as exc:
        _read(path)
    assert str(exc.value).startswith(f"{path} [key 'line 4']: a field too long")
    assert "at most 1,000 characters" in str(exc.value)
    assert csv.field_size_limit() == 131_072


def test_a_row_with_more_fields_than_the_header(tmp_path):
    path = tmp_path / "comma.csv"
    path.write_text("text,label\ngood,1\nnice, day,0\nok,1,\n")
    with pytest.raises(GenboundError) as exc:
        _read(path)
    assert str(exc.value).startswith(f"{path} [key 'line 3']: more fields than the header")
    # a trailing empty field is not an extra column
    path.write_text("text,label\ngood,1,\nok,0\n")
    assert _read(path).labels.tolist() == [1, 0]


def test_encoding_folder_and_byte_order_mark(tmp_path):
    path = _csv(tmp_path / "a.csv", _rows([0, 1]))
    with pytest.raises(GenboundError, match=r"a\.csv: unknown text encoding.*'nonsense-enc'"):
        _read(path, encoding="nonsense-enc")
    with pytest.raises(GenboundError, match=r"unknown text encoding.*'base64'"):
        _read(path, encoding="base64")  # a codec, but not of text
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(GenboundError, match=r"folder\.csv: not a file.*found a folder"):
        _read(folder)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\ngood,1\n".encode())
    assert _read(bom).texts == ("good",)


def test_max_length_and_batch_size_must_be_positive(tmp_path):
    train = _csv(tmp_path / "train.csv", _rows([0, 1]))
    for bad in (0, -3, 2.5):
        with pytest.raises(GenboundError, match=rf"--max-length: expected a positive number of tokens; found {bad}"):  # fmt: skip
            text_files(str(train), str(train), max_length=bad)
    with pytest.raises(GenboundError, match="batch_size: expected a positive number of examples"):
        text_files(str(train), str(train), batch_size=0)
    data = _read(train)
    with pytest.raises(GenboundError, match="max_length: expected a positive number of tokens"):
        TextClassificationTask(data, data, max_length=0)


# ------------------------------------------------------------------ tokenizer and head
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT base with a tokenizer and a PEFT LoRA of it with a 3-class head."""
    root = tmp_path_factory.mktemp("tiny")
    base_dir = tiny_bert_with_tokenizer(root)
    ckpt, _ = tiny_bert_lora(root, base_dir, ["query", "value"], [1])
    return base_dir, ckpt


def test_a_base_folder_without_a_tokenizer_is_named(tmp_path):
    from conftest import tiny_bert

    base = tmp_path / "no-tokenizer"
    tiny_bert().save_pretrained(base)
    with pytest.raises(GenboundError) as exc:
        load_tokenizer(base)
    msg = str(exc.value)
    assert msg.startswith(f"{base}: no tokenizer vocabulary") and "tokenizer.json" in msg
    (base / "tokenizer.json").write_text("{not json")
    with pytest.raises(GenboundError, match=r"no-tokenizer: cannot load a tokenizer"):
        load_tokenizer(base)


def test_the_base_models_head_against_the_data(tiny, tmp_path):
    from conftest import tiny_bert

    base_dir, _ = tiny
    four = _read(_csv(tmp_path / "four.csv", _rows(["a", "b", "c", "d"])))
    with pytest.raises(GenboundError) as exc:
        TextClassificationTask(four, four, base_path=base_dir).build_model(None)
    msg = str(exc.value)
    assert msg.startswith(f"{base_dir} [key 'classifier.weight']: the base model's head has 3")
    assert "4 labels ['a', 'b', 'c', 'd']" in msg and str(tmp_path / "four.csv") in msg
    # a base without a head gets a fresh one with a row per class
    bare = tmp_path / "bare"
    tiny_bert().bert.save_pretrained(bare)
    model = TextClassificationTask(four, four, base_path=bare).build_model(None)
    assert model.classifier.out_features == 4


def test_the_checkpoints_head_against_the_data(tiny, tmp_path):
    from conftest import tiny_bert

    base_dir, ckpt = tiny
    two = _read(_csv(tmp_path / "two.csv", _rows(["a", "b"])))
    bare = tmp_path / "bare"
    tiny_bert().bert.save_pretrained(bare)  # no saved head: only the checkpoint's says K
    for base in (base_dir, bare):
        with pytest.raises(GenboundError) as exc:
            TextClassificationTask(two, two, base_path=base).build_model(ckpt)
        msg = str(exc.value)
        assert msg.startswith(f"{ckpt.path} [key '") and "classifier" in msg
        assert "the checkpoint's head has 3 classes but the data have 2" in msg
        assert "--label-names" in msg
    three = _read(_csv(tmp_path / "three.csv", _rows(["a", "b", "c"])))
    model = TextClassificationTask(three, three, base_path=base_dir).build_model(ckpt)
    assert model.classifier.out_features == 3


# ------------------------------------------------------------------ through the CLI
def _fails(ckpt, train, test, tmp_path, capsys, *extra) -> str:
    """``genbound report`` with these data: exit 2, no traceback, no report; the message."""
    out = tmp_path / "rep"
    argv = ["report", str(ckpt.path), "--data", str(train), str(test), "--out", str(out)]
    code = main([*argv, "--only", "gap", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and 'File "' not in err, err
    assert not out.exists()
    return err


def test_a_billion_as_a_label_through_the_cli(tiny, tmp_path):
    """Three distinct labels are three classes, whatever their values: the report runs."""
    _, ckpt = tiny
    train = _write(tmp_path / "billion.csv", "text,label\ngood,0\nbad,1000000000\nfine,1\n")
    test = _csv(tmp_path / "test.csv", _rows([0, 1000000000, 1]))
    out = tmp_path / "rep"
    argv = ["report", str(ckpt.path), "--data", str(train), str(test), "--out", str(out)]
    assert main([*argv, "--only", "gap"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["data"]["num_labels"] == 3 and doc["gap"]["test"]["n"] == 3


@pytest.mark.parametrize(
    ("case", "content", "words"),
    [
        ("empty-label.csv", "text,label\ngood,0\nbad,\n", "missing label in data row 2 (line 3)"),
        ("null.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": null}\n', "missing label in line 2"),
        ("list.jsonl", '{"text": "a", "label": 0}\n[1]\n', "not a JSON object"),
        ("notext.jsonl", '{"text": "a", "label": 0}\n{"label": 1}\n', "missing text in line 2"),
        ("four.csv", "text,label\na,0\nb,1\nc,2\nd,3\n", "the checkpoint's head has 3 classes but the data have 4"),
    ],
)  # fmt: skip
def test_bad_training_files_through_the_cli(tiny, tmp_path, capsys, case, content, words):
    _, ckpt = tiny
    train = _write(tmp_path / case, content)
    test = _csv(tmp_path / "test.csv", _rows([0, 1, 2]))
    err = _fails(ckpt, train, test, tmp_path, capsys)
    assert str(train) in err and words in err, err


def test_bad_test_files_and_settings_through_the_cli(tiny, tmp_path, capsys, monkeypatch):
    _, ckpt = tiny
    train = _csv(tmp_path / "train.csv", _rows([0, 1, 2, 1]))
    test = _csv(tmp_path / "test.csv", _rows(["1.0", "7", "2"]))
    err = _fails(ckpt, train, test, tmp_path, capsys)
    assert f"{test} [key 'label']: unknown labels" in err and "['7']" in err
    err = _fails(ckpt, train, train, tmp_path, capsys, "--encoding", "nonsense-enc")
    assert str(train) in err and "unknown text encoding" in err and "'nonsense-enc'" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    err = _fails(ckpt, folder, train, tmp_path, capsys)
    assert f"{folder}: not a file" in err
    monkeypatch.setattr(texts_module, "MAX_FIELD_CHARS", 500)
    long = _csv(tmp_path / "long.csv", [["good", 0], ["x" * 600, 1]])
    err = _fails(ckpt, long, train, tmp_path, capsys)
    assert f"{long} [key 'line 3']: a field too long" in err


def test_long_texts_and_numeric_labels_through_the_cli(tiny, tmp_path):
    """A 200,000-character text is read (and truncated by the tokenizer); a test label 1.0
    is the training file's class 1."""
    _, ckpt = tiny
    train = _csv(tmp_path / "train.csv", [*_rows([0, 1, 2]), [" ".join(["good"] * 40_000), 1]])
    test = _csv(tmp_path / "test.csv", _rows(["1.0", "2", "0"]))
    out = tmp_path / "rep"
    argv = ["report", str(ckpt.path), "--data", str(train), str(test), "--out", str(out)]
    assert main([*argv, "--only", "gap"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["gap"]["train"]["n"] == 4 and doc["gap"]["test"]["n"] == 3


def test_a_base_without_a_tokenizer_through_the_cli(tmp_path, capsys):
    from conftest import tiny_bert

    base = tmp_path / "base-no-tokenizer"
    tiny_bert().save_pretrained(base)
    ckpt, _ = tiny_bert_lora(tmp_path, base, ["query"], [1])
    train = _csv(tmp_path / "train.csv", _rows([0, 1, 2]))
    err = _fails(ckpt, train, train, tmp_path, capsys)
    assert f"{base}: no tokenizer vocabulary" in err and "tokenizer.json" in err
