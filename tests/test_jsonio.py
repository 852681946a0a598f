"""One JSON converter for every file genbound writes, and one run-folder writer.

Non-finite numbers are written as the strings "inf", "-inf", "nan" (never a bare NaN or
Infinity) in reports, run manifests and PEFT exports, and run manifests read them back as
floats; an AdapterHandle and a live PEFT model write manifests of one form.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_peft, tiny_bert
from helpers import tiny_run
from torch import nn

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.callbacks import trainable_snapshot, write_live_run
from genbound.checkpoint.manifest import stored_dtype
from genbound.jsonio import decoded, dumps_json, jsonable, number


def strict_load(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (as strict readers do)."""

    def refuse(name):
        raise AssertionError(f"bare {name} in JSON text")

    return json.loads(text, parse_constant=refuse)


@dataclasses.dataclass
class Result:
    value: float
    counts: np.ndarray
    hidden: str = "secret"


def test_jsonable_writes_non_finite_as_strings_and_keeps_types():
    doc = {
        "f": [math.inf, -math.inf, math.nan, 0.5],
        "np32": np.float32(np.inf),
        "np64": np.array([1.0, np.nan]),
        "int": np.int64(7),
        "flag": np.bool_(True),
        "tensor": torch.tensor([[1.0, float("-inf")]]),
        "bf16": torch.tensor([0.5, float("nan")], dtype=torch.bfloat16),
        "scalar": torch.tensor(3),
        "dtype": torch.float16,
        "path": Path("/a/b"),
        "result": Result(math.inf, np.array([1, 2])),
        3: (True, None, "x"),
    }
    out = jsonable(doc, skip=frozenset({"hidden"}))
    assert out == {
        "f": ["inf", "-inf", "nan", 0.5],
        "np32": "inf",
        "np64": [1.0, "nan"],
        "int": 7,
        "flag": True,
        "tensor": [[1.0, "-inf"]],
        "bf16": [0.5, "nan"],
        "scalar": 3,
        "dtype": "float16",
        "path": "/a/b",
        "result": {"value": "inf", "counts": [1, 2]},
        "3": [True, None, "x"],
    }
    assert type(out["int"]) is int and type(out["scalar"]) is int and type(out["flag"]) is bool
    text = dumps_json(doc)
    assert text.endswith("\n") and strict_load(text)["f"] == ["inf", "-inf", "nan", 0.5]


def test_reading_back_non_finite_numbers():
    assert [number(x) for x in (1, 2.5, True, None, "1.0", [1])] == [
        1.0,
        2.5,
        None,
        None,
        None,
        None,
    ]
    assert number("inf") == math.inf and number("-inf") == -math.inf and math.isnan(number("nan"))
    back = decoded({"a": ["inf", 1, "x"], "b": {"c": "-inf"}, "d": "nan"})
    assert back["a"][0] == math.inf and back["a"][1:] == [1, "x"] and back["b"]["c"] == -math.inf
    assert math.isnan(back["d"])


def test_converter_imports_neither_torch_nor_numpy():
    from genbound.report import serialize

    assert serialize.jsonable is jsonable and serialize.dumps_json is dumps_json
    code = (
        "import sys, genbound.jsonio as j\n"
        "heavy = [m for m in ('torch', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(j.dumps_json({'x': float('inf')}), end='')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"x": "inf"}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.classifier = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.fc1(x)))


METRICS = {"train_loss": math.inf, "eval_loss": math.nan, "history": [1.5, -math.inf], "steps": 3}


def check_metrics(metrics):
    assert metrics["train_loss"] == math.inf and math.isnan(metrics["eval_loss"])
    assert metrics["history"] == [1.5, -math.inf] and metrics["steps"] == 3
    assert type(metrics["steps"]) is int


@pytest.mark.parametrize("writer", ["save", "write_live_run"])
def test_handle_runs_write_non_finite_metrics_as_strings(tmp_path, writer):
    h = ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0)
    h.snapshot(1)
    if writer == "save":
        run = h.save(tmp_path / "run", metrics=METRICS)
    else:
        run = write_live_run(h, tmp_path / "run", metrics=METRICS)
    man = strict_load((run / "genbound.json").read_text())
    assert man["metrics"] == {
        "train_loss": "inf",
        "eval_loss": "nan",
        "history": [1.5, "-inf"],
        "steps": 3,
    }
    ckpt = load_checkpoint(run)
    check_metrics(ckpt.metrics)


def test_a_hand_written_manifest_metric_inf_loads_as_a_float(tmp_path):
    run = tiny_run(tmp_path, metrics={"train_loss": "inf", "h": ["nan", 2], "note": "ok"})
    m = load_checkpoint(run).metrics
    assert m["train_loss"] == math.inf and math.isnan(m["h"][0]) and m["h"][1] == 2
    assert m["note"] == "ok"


def test_a_value_json_cannot_hold_is_a_named_error_and_nothing_is_written(tmp_path):
    with pytest.raises(GenboundError, match=r"run[/\\]genbound\.json.*object"):
        tiny_run(tmp_path, metrics={"bad": object()})
    assert not (tmp_path / "run").exists()


def test_handle_and_live_peft_runs_share_one_manifest_form(tmp_path):
    """Both producers go through one writer: the same fields, the trajectory stored alike,
    and each run reloads with the updates of the model it came from."""
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    base_dir, adapter_dir, merged = build_peft(
        tmp_path,
        tiny_bert,
        {"r": 2, "target_modules": ["query"], "modules_to_save": ["classifier"]},
    )
    peft_model = PeftModel.from_pretrained(
        BertForSequenceClassification.from_pretrained(base_dir), adapter_dir, is_trainable=True
    )
    snaps = [(2, trainable_snapshot(peft_model)), (5, trainable_snapshot(peft_model))]
    live = write_live_run(
        peft_model, tmp_path / "live", snapshots=snaps, base=base_dir, n_train=9, metrics=METRICS
    )
    h = ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0)
    h.snapshot(2)
    h.snapshot(5)
    own = h.save(tmp_path / "own", base_model=base_dir, n_train=9, metrics=METRICS)
    live_man = strict_load((live / "genbound.json").read_text())
    own_man = strict_load((own / "genbound.json").read_text())
    # one writer: same fields, same order (a genbound run also records its initial A,
    # which a PEFT adapter does not know)
    assert list(live_man) == [k for k in own_man if k != "initial"]
    assert own_man["initial"] == {"fc1::A": "initial.fc1.A"} and "initial" not in live_man
    for man in (live_man, own_man):
        assert man["base_model"] == {"path": str(base_dir.resolve())} and man["n_train"] == 9
        assert man["trajectory"]["file"] == "trajectory.safetensors"
        assert man["trajectory"]["steps"] == [2, 5]
        assert man["metrics"]["train_loss"] == "inf"
    assert man["dtype"] == "float32"
    ckpt = load_checkpoint(live)
    check_metrics(ckpt.metrics)
    for u in ckpt.updates.values():  # the live run holds the adapter's dW: W0 + dW is PEFT's merge
        key = ckpt.base.resolve(u.param)
        w = ckpt.base.tensor(key).to(torch.float64) + u.delta(torch.float64, stored=True)
        torch.testing.assert_close(w, merged[key].to(torch.float64), rtol=1e-6, atol=1e-7)


def test_stored_dtype():
    f16, f32 = torch.zeros(1, dtype=torch.float16), torch.zeros(1)
    assert stored_dtype({"a": f16, "i": torch.zeros(1, dtype=torch.int64)}) == torch.float16
    assert stored_dtype({"a": f16, "b": f32}) == torch.float32
    assert stored_dtype({}) == torch.float32


def test_peft_export_config_is_strict_json(tmp_path):
    h = ga.apply(MLP(), "lora", rank=2, alpha=4, targets=["fc1"], seed=0)
    out = h.export_peft(tmp_path / "peft")
    config = strict_load((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4 and config["target_modules"] == ["fc1"]
