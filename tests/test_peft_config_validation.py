"""adapter_config.json and trainer_state.json are checked field by field at load time: a wrong
type or value is a named error (file and key) and exit 2, never a traceback or a silent
conversion; the Trainer's logged training loss is named for what it is."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import build_peft, tiny_bert

from genbound import load_checkpoint
from genbound.checkpoint.peft import CONFIG_SCHEMA
from genbound.cli.main import main
from genbound.errors import GenboundError
from genbound.report.writer import checkpoint_info

CFG = dict(r=4, lora_alpha=8, target_modules=["query", "value"])


@pytest.fixture(scope="module")
def adapter_template(tmp_path_factory):
    _, ad, _ = build_peft(tmp_path_factory.mktemp("peft"), tiny_bert, CFG)
    return ad


@pytest.fixture
def adapter(adapter_template, tmp_path):
    """A fresh copy of the adapter folder (its config points to the shared base)."""
    return shutil.copytree(adapter_template, tmp_path / "adapter")


def _set_config(ad, **changes):
    path = ad / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# (changes to adapter_config.json, the key the error names)
BAD_CONFIGS = {
    "r string": ({"r": "two"}, "r"),
    "r null": ({"r": None}, "r"),
    "r float": ({"r": 2.5}, "r"),
    "r integral float": ({"r": 4.0}, "r"),
    "r bool": ({"r": True}, "r"),
    "r zero with rank pattern": ({"r": 0, "rank_pattern": {"query": 4}}, "r"),
    "r negative": ({"r": -4}, "r"),
    "alpha string": ({"lora_alpha": "four"}, "lora_alpha"),
    "alpha NaN": ({"lora_alpha": math.nan}, "lora_alpha"),
    "alpha null": ({"lora_alpha": None}, "lora_alpha"),
    "rank_pattern list": ({"rank_pattern": ["query", 4]}, "rank_pattern"),
    "rank_pattern bad regex": ({"rank_pattern": {"query(": 4}}, "rank_pattern.query("),
    "rank_pattern string rank": ({"rank_pattern": {"query": "4"}}, "rank_pattern.query"),
    "rank_pattern zero rank": ({"rank_pattern": {"query": 0}}, "rank_pattern.query"),
    "alpha_pattern bad regex": ({"alpha_pattern": {"[value": 2}}, "alpha_pattern.[value"),
    "alpha_pattern string": ({"alpha_pattern": {"value": "2"}}, "alpha_pattern.value"),
    "use_rslora string": ({"use_rslora": "yes"}, "use_rslora"),
    "use_dora number": ({"use_dora": 1}, "use_dora"),
    "fan_in_fan_out string": ({"fan_in_fan_out": "false"}, "fan_in_fan_out"),
    "target_modules number": ({"target_modules": 5}, "target_modules"),
    "target_modules mixed list": ({"target_modules": ["query", 3]}, "target_modules[1]"),
    "modules_to_save string": ({"modules_to_save": "classifier"}, "modules_to_save"),
    "peft_type number": ({"peft_type": 3}, "peft_type"),
    "base path number": ({"base_model_name_or_path": 7}, "base_model_name_or_path"),
    "init number": ({"init_lora_weights": 1}, "init_lora_weights"),
}


@pytest.mark.parametrize("changes, key", BAD_CONFIGS.values(), ids=list(BAD_CONFIGS))
def test_bad_config_value_is_a_named_error(adapter, capsys, changes, key):
    _set_config(adapter, **changes)
    config = adapter / "adapter_config.json"
    with pytest.raises(GenboundError) as err:
        load_checkpoint(adapter)
    msg = str(err.value)
    assert msg.startswith(str(config)), msg
    assert f"[key {key!r}]" in msg, msg
    assert "expected" in msg and "found" in msg, msg

    capsys.readouterr()
    assert main(["inspect", str(adapter)]) == 2
    err_text = capsys.readouterr().err
    assert "Traceback" not in err_text
    assert str(config) in err_text and f"[key {key!r}]" in err_text


def test_valid_patterns_and_nulls_still_load(adapter):
    _set_config(
        adapter,
        rank_pattern={r"layer\.0\..*query": 4},
        alpha_pattern={"value": 2.5},
        modules_to_save=None,
        target_modules="query|value",
        init_lora_weights="gaussian",
    )
    ckpt = load_checkpoint(adapter)
    up = ckpt.updates["bert.encoder.layer.1.attention.self.value"]
    assert up.scale == pytest.approx(2.5 / 4)
    assert ckpt.updates["bert.encoder.layer.0.attention.self.query"].scale == pytest.approx(2.0)


def _peft_docs() -> str:
    doc = (Path(__file__).parents[1] / "docs" / "checkpoint-format.md").read_text()
    return doc[doc.index("# PEFT adapter folders") :]


def test_docs_state_every_config_field():
    doc = _peft_docs()
    for name in CONFIG_SCHEMA.fields:
        assert f"`{name}`" in doc, name


def _assert_metrics_documented(metrics) -> None:
    doc = _peft_docs()
    for name in metrics:
        assert name.endswith("_history") or f"`{name}`" in doc, name


def _write_state(ad, log_history, **extra):
    state = {"global_step": 25, "log_history": log_history, **extra}
    (ad / "trainer_state.json").write_text(json.dumps(state))


def test_trainer_loss_is_named_as_the_last_logged_window(adapter):
    history = [
        {"epoch": 0.4, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": 1.25, "step": 10},
        {"epoch": 0.8, "loss": 0.75, "step": 20},
        {"epoch": 0.8, "eval_loss": 0.9, "eval_runtime": 0.1, "step": 20},
        {"epoch": 1.0, "loss": 0.5, "step": 25},
    ]
    _write_state(adapter, history, logging_steps=10)
    ckpt = load_checkpoint(adapter)
    m = ckpt.metrics
    assert "train_loss" not in m
    assert m["last_logged_train_loss"] == 0.5
    assert m["last_logged_train_loss_step"] == 25
    assert m["last_logged_train_loss_window"] == 5  # steps 21..25: a short last window
    assert m["logging_steps"] == 10
    assert (m["eval_loss"], m["eval_loss_step"]) == (0.9, 20)
    assert m["train_loss_history"] == [(10, 1.25), (20, 0.75), (25, 0.5)]
    assert "run_mean_train_loss" not in m
    note = next(n for n in ckpt.notes if "last_logged_train_loss" in n)
    assert "last logging window of 5 steps, step 25" in note and "not a mean" in note
    info = checkpoint_info(ckpt)
    assert info["metrics"]["last_logged_train_loss"] == 0.5
    assert not any(k.endswith("_history") for k in info["metrics"])
    assert note in info["notes"]
    _assert_metrics_documented(m)


def test_run_mean_train_loss_when_the_trainer_logged_it(adapter):
    history = [
        {"loss": 1.0, "step": 10},
        {"loss": 0.6, "step": 20},
        {"train_loss": 0.8, "train_runtime": 3.0, "step": 20},
    ]
    _write_state(adapter, history)
    m = load_checkpoint(adapter).metrics
    assert m["run_mean_train_loss"] == 0.8 and m["last_logged_train_loss"] == 0.6
    assert m["last_logged_train_loss_window"] == 10 and "logging_steps" not in m
    _assert_metrics_documented(m)


@pytest.mark.parametrize(
    "history, extra, key",
    [
        ([{"loss": 1.0, "step": 10}, {"loss": "low", "step": 20}], {}, "log_history[1].loss"),
        ([{"loss": 1.0, "step": "ten"}], {}, "log_history[0].step"),
        ([["loss", 1.0]], {}, "log_history[0]"),
        ({"loss": 1.0}, {}, "log_history"),
        ([], {"logging_steps": "10"}, "logging_steps"),
    ],
    ids=["loss string", "step string", "entry list", "history object", "logging_steps string"],
)
def test_bad_trainer_state_is_a_named_error(adapter, capsys, history, extra, key):
    _write_state(adapter, history, **extra)
    with pytest.raises(GenboundError) as err:
        load_checkpoint(adapter)
    msg = str(err.value)
    assert msg.startswith(str(adapter / "trainer_state.json")) and f"[key {key!r}]" in msg, msg
    capsys.readouterr()
    assert main(["inspect", str(adapter)]) == 2
    assert "Traceback" not in capsys.readouterr().err
