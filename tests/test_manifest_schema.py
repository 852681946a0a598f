"""``genbound.json`` is checked against its schema when loaded: a field of the wrong type
or value is a named error (file, key, expected, found) and exit 2, never a traceback."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genbound import load_checkpoint
from genbound.checkpoint import write_run
from genbound.cli.main import main
from genbound.errors import GenboundError

N, M = 4, 6
DELETE = object()


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory):
    """A run folder that uses every manifest field and every link kind."""
    tmp = tmp_path_factory.mktemp("schema")
    g = torch.Generator().manual_seed(0)
    t = {
        k: torch.randn(*s, generator=g)
        for k, s in {
            "B1": (N, 2),
            "A1": (2, M),
            "Bs": (N, 2),
            "dB": (N, 1),
            "dA": (1, M),
            "mag": (N,),
            "hV": (3, N),
            "hI": (3, N),
            "D": (N, M),
        }.items()
    }
    t["idx"] = torch.tensor([0, 5])
    updates = {
        "lin1": {
            "param": "lin1.weight",
            "shape": [N, M],
            "transposed": False,
            "link": {"kind": "lowrank", "B": "B1", "A": "A1", "scale": 0.5, "trained": ["B"]},
        },
        "lin3": {
            "shape": [N, M],
            "link": {
                "kind": "chain",
                "links": [
                    {"kind": "selector", "B": "Bs", "indices": "idx", "scale": 2.0},
                    {"kind": "dense", "delta": "D"},
                ],
            },
        },
        "lin4": {
            "shape": [N, M],
            "link": {
                "kind": "dora",
                "lowrank": {"kind": "lowrank", "B": "dB", "A": "dA", "scale": 1.5},
                "magnitude": "mag",
            },
        },
        "head": {
            "param": "head.weight",
            "shape": [3, N],
            "link": {
                "kind": "dense",
                "value": "hV",
                "initial": "hI",
                "trainable": 12,
                "new": False,
            },
        },
    }
    manifest = {
        "variant": "c3la",
        "hparams": {
            "rank": 2,
            "alpha": 4.0,
            "scale": 2.0,
            "rslora": False,
            "chain": 2,
            "chain_planned": 3,
            "selector_seed": None,
            "targets": ["lin"],
            "layers": ["lin1", "lin3", "lin4"],
            "head": ["head"],
            "lr_ratio": 16.0,
            "rank_pattern": {"lin1": 2},
        },
        "base_model": {"path": "no-such-base", "python": None},
        "data": {"task": "genbound.tasks.hf_text:text_files", "kwargs": {"train": "a.csv"}},
        "n_train": 100,
        "seed": 3,
        "dtype": "float32",
        "metrics": {"train_loss": 0.5, "test_acc": "nan", "steps": 10, "history": [{"step": 1}]},
        "trajectory": {"file": "trajectory.safetensors", "steps": [0, 5], "params": ["lin1.B"]},
        "updates": updates,
    }
    run = write_run(tmp / "run", manifest, t)
    return json.loads((run / "genbound.json").read_text()), run


# (path into the manifest, bad value, the key the error must name)
CASES = [
    (("schema",), DELETE, "schema"),
    (("variant",), 3, "variant"),
    (("variant",), DELETE, "variant"),
    (("updates",), [], "updates"),
    (("updates",), DELETE, "updates"),
    (("updates", "lin1"), 5, "updates.lin1"),
    (("updates", "lin1", "shape"), "4x6", "updates.lin1.shape"),
    (("updates", "lin1", "shape"), [4, "6"], "updates.lin1.shape[1]"),
    (("updates", "lin1", "shape"), [4, -6], "updates.lin1.shape[1]"),
    (("updates", "lin1", "shape"), [4.0, 6], "updates.lin1.shape[0]"),
    (("updates", "lin1", "shape"), [True, 6], "updates.lin1.shape[0]"),
    (("updates", "lin1", "shape"), [], "updates.lin1.shape"),
    (("updates", "lin1", "shape"), DELETE, "updates.lin1.shape"),
    (("updates", "lin1", "param"), 7, "updates.lin1.param"),
    (("updates", "lin1", "transposed"), "no", "updates.lin1.transposed"),
    (("updates", "lin1", "link"), [], "updates.lin1.link"),
    (("updates", "lin1", "link", "kind"), "magic", "updates.lin1.link.kind"),
    (("updates", "lin1", "link", "kind"), DELETE, "updates.lin1.link.kind"),
    (("updates", "lin1", "link", "scale"), "0.5", "updates.lin1.link.scale"),
    (("updates", "lin1", "link", "scale"), math.nan, "updates.lin1.link.scale"),
    (("updates", "lin1", "link", "scale"), math.inf, "updates.lin1.link.scale"),
    (("updates", "lin1", "link", "scale"), True, "updates.lin1.link.scale"),
    (("updates", "lin1", "link", "scale"), None, "updates.lin1.link.scale"),
    (("updates", "lin1", "link", "trained"), "B", "updates.lin1.link.trained"),
    (("updates", "lin1", "link", "trained"), ["B", 1], "updates.lin1.link.trained[1]"),
    (("updates", "lin1", "link", "B"), 3, "updates.lin1.link.B"),
    (("updates", "lin3", "link", "links"), [], "updates.lin3.link.links"),
    (("updates", "lin3", "link", "links"), "x", "updates.lin3.link.links"),
    (("updates", "lin3", "link", "links", 0, "scale"), "x", "updates.lin3.link.links[0].scale"),
    (("updates", "lin3", "link", "links", 1), 2, "updates.lin3.link.links[1]"),
    (("updates", "lin4", "link", "lowrank", "scale"), [1], "updates.lin4.link.lowrank.scale"),
    (("updates", "head", "link", "trainable"), -1, "updates.head.link.trainable"),
    (("updates", "head", "link", "trainable"), 1.5, "updates.head.link.trainable"),
    (("updates", "head", "link", "new"), "yes", "updates.head.link.new"),
    (("dtype",), 32, "dtype"),
    (("dtype",), "float8", "dtype"),
    (("dtype",), None, "dtype"),
    (("n_train",), "100", "n_train"),
    (("n_train",), 0, "n_train"),
    (("n_train",), -3, "n_train"),
    (("n_train",), 2.5, "n_train"),
    (("n_train",), True, "n_train"),
    (("seed",), "x", "seed"),
    (("seed",), 1.5, "seed"),
    (("base_model",), 5, "base_model"),
    (("base_model",), ["x"], "base_model"),
    (("base_model", "path"), 5, "base_model.path"),
    (("base_model", "python"), ["a:b"], "base_model.python"),
    (("hparams",), [], "hparams"),
    (("hparams", "rank"), "two", "hparams.rank"),
    (("hparams", "rank"), 0, "hparams.rank"),
    (("hparams", "rank"), 2.5, "hparams.rank"),
    (("hparams", "alpha"), "four", "hparams.alpha"),
    (("hparams", "scale"), math.inf, "hparams.scale"),
    (("hparams", "rslora"), "yes", "hparams.rslora"),
    (("hparams", "chain"), 0, "hparams.chain"),
    (("hparams", "selector_seed"), "s", "hparams.selector_seed"),
    (("hparams", "targets"), "query", "hparams.targets"),
    (("hparams", "targets"), ["query", 1], "hparams.targets[1]"),
    (("hparams", "layers"), None, "hparams.layers"),
    (("hparams", "lr_ratio"), "16", "hparams.lr_ratio"),
    (("metrics",), "good", "metrics"),
    (("metrics",), [0.5], "metrics"),
    (("metrics", "train_loss"), {"mean": 0.5}, "metrics.train_loss"),
    (("data",), "genbound.tasks.hf_text:text_files", "data"),
    (("data", "task"), 5, "data.task"),
    (("data", "task"), DELETE, "data.task"),
    (("data", "kwargs"), [1], "data.kwargs"),
    (("trajectory",), 1, "trajectory"),
    (("trajectory", "file"), "../x.safetensors", "trajectory.file"),
    (("trajectory", "steps"), [-1], "trajectory.steps[0]"),
    (("trajectory", "params"), "lin1.B", "trajectory.params"),
    (("tensor_file",), "../updates.safetensors", "tensor_file"),
    (("tensor_file",), "/etc/passwd", "tensor_file"),
    (("tensor_file",), "..", "tensor_file"),
    (("tensor_file",), 3, "tensor_file"),
]


def _corrupt(manifest: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(manifest))
    node = out
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def test_valid_run_loads(valid_run):
    _, run = valid_run
    ckpt = load_checkpoint(run)
    assert set(ckpt.updates) == {"lin1", "lin3", "lin4", "head"}
    assert ckpt.n_train == 100 and ckpt.seed == 3 and ckpt.metrics["steps"] == 10
    assert ckpt.hparams.rank == 2 and ckpt.hparams.targets == ("lin",)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    CASES,
    ids=[f"{k}={'missing' if v is DELETE else repr(v)}"[:60] for _, v, k in CASES],
)
def test_wrong_type_is_a_named_error(valid_run, tmp_path, capsys, path, value, key):
    manifest, run = valid_run
    bad = tmp_path / "run"
    bad.mkdir()
    for f in run.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "genbound.json").write_text(json.dumps(_corrupt(manifest, path, value)))
    mpath = str(bad / "genbound.json")
    with pytest.raises(GenboundError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert msg.startswith(f"{mpath} [key '{key}']: "), msg
    assert "expected" in msg and "found" in msg
    capsys.readouterr()
    assert main(["inspect", str(bad)]) == 2
    out = capsys.readouterr()
    assert f"{mpath} [key '{key}']" in out.err
    assert "Traceback" not in out.err and "Traceback" not in out.out


def test_docs_state_every_schema_field_and_own_reference():
    """docs/checkpoint-format.md lists every field the schema checks and every reference
    a run folder may name without trust_code."""
    from pathlib import Path

    from genbound.checkpoint.native import (
        HPARAMS_SCHEMA,
        LINK_SCHEMA,
        MANIFEST_SCHEMA,
        UPDATE_SCHEMA,
    )
    from genbound.trust import BASE_MODELS, TASKS

    doc = (Path(__file__).parents[1] / "docs" / "checkpoint-format.md").read_text()
    types = doc[doc.index("### Field types") : doc.index("### Code a run folder names")]
    for schema in (MANIFEST_SCHEMA, HPARAMS_SCHEMA, UPDATE_SCHEMA, LINK_SCHEMA):
        for name in schema.fields:
            assert f"`{name}`" in types, name
    trust = doc[doc.index("### Code a run folder names") : doc.index("## Updates")]
    for reference in [*TASKS.targets, *BASE_MODELS.targets]:
        assert f"`{reference}`" in trust, reference
