"""Read Hugging Face PEFT LoRA adapter folders (including DoRA, rsLoRA, Trainer checkpoints),
and PEFT VeRA adapters (:mod:`genbound.checkpoint.peft_vera`).

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or
``adapter_model.bin``); a Trainer's ``checkpoint-N/`` adds ``trainer_state.json``.
Extra adapters live in sub-folders named after them. Keys look like
``base_model.model.<module>.lora_A.weight`` (r x m), ``...lora_B.weight`` (n x r),
``...lora_magnitude_vector`` (n, DoRA), ``...lora_embedding_A`` (r x vocab) and
``...lora_embedding_B`` (dim x r); any other key is a whole saved tensor
(``modules_to_save``, trained biases, resized embeddings).

dW = s B A with s = alpha / r, or alpha / sqrt(r) with ``use_rslora``;
``rank_pattern``/``alpha_pattern`` override r and alpha per module using PEFT's
own matching rule; ``fan_in_fan_out`` means the base weight is stored (m x n).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Checkpoint, Hyperparams
from genbound.checkpoint.peft_tensors import (
    finished,
    group_keys,
    saved_updates,
)
from genbound.checkpoint.peft_vera import read_vera, vera_hparams
from genbound.checkpoint.schema import (
    BOOL,
    INT,
    NONNEGATIVE_INT,
    NUMBER,
    POSITIVE_INT,
    STRING,
    STRINGS,
    AnyOf,
    Leaf,
    ListOf,
    MapOf,
    Mismatch,
    Node,
    Nullable,
    Record,
    check_json,
    shown,
)
from genbound.checkpoint.tensors import TensorFile, read_json
from genbound.checkpoint.updates import DenseUpdate, DoraUpdate, LowRankUpdate, Update
from genbound.errors import input_error

CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

#: PEFT initialisations that rewrite the base weight: the adapter alone is not a dW of it.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga")

_LORA_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "B_bias",
    ".lora_magnitude_vector.weight": "magnitude",
    ".lora_magnitude_vector": "magnitude",
    ".lora_embedding_A": "emb_A",
    ".lora_embedding_B": "emb_B",
}


@dataclass(frozen=True)
class PatternMap:
    """An object whose names are PEFT module patterns (regular expressions, matched as in
    :func:`pattern_key`) and whose values are all of ``value``."""

    text: str
    value: Node

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        if not isinstance(value, dict):
            return Mismatch(key, self.text, shown(value))
        for name in value:
            try:
                for regex in (name, _pattern_regex(name)):
                    re.compile(regex)
            except re.error as exc:
                return Mismatch(
                    f"{key}.{name}",
                    "a module pattern that is a valid regular expression",
                    f"{name!r} ({exc})",
                    problem="invalid module pattern",
                )
        return MapOf(self.text, self.value).mismatch(value, key)


#: The fields of ``adapter_config.json`` that genbound reads, and what each must hold; fields
#: it does not read are not checked. Absent fields take PEFT's defaults.
CONFIG_SCHEMA = Record(
    "an object (PEFT's LoraConfig or VeraConfig)",
    {
        "peft_type": STRING,
        "r": POSITIVE_INT,
        "lora_alpha": NUMBER,
        "use_rslora": BOOL,
        "use_dora": BOOL,
        "fan_in_fan_out": BOOL,
        "rank_pattern": Nullable(
            PatternMap("an object of module patterns to positive integers", POSITIVE_INT)
        ),
        "alpha_pattern": Nullable(
            PatternMap("an object of module patterns to finite numbers", NUMBER)
        ),
        "target_modules": Nullable(AnyOf("a string or a list of strings", (STRING, STRINGS))),
        "modules_to_save": Nullable(STRINGS),
        "base_model_name_or_path": Nullable(STRING),
        "init_lora_weights": AnyOf("true, false or a string", (BOOL, STRING)),
        "bias": STRING,
        "task_type": Nullable(STRING),
        "projection_prng_key": INT,
        "d_initial": NUMBER,
        "save_projection": BOOL,
    },
)

_LOSS = Leaf("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))

#: The fields of a Trainer's ``trainer_state.json`` that genbound reads.
TRAINER_STATE_SCHEMA = Record(
    "an object (transformers' TrainerState)",
    {
        "global_step": Nullable(NONNEGATIVE_INT),
        "logging_steps": Nullable(NONNEGATIVE_INT),
        "log_history": ListOf(
            "a list of logged entries",
            Record(
                "an object",
                {"step": NONNEGATIVE_INT, "loss": _LOSS, "eval_loss": _LOSS, "train_loss": _LOSS},
            ),
        ),
    },
)


def is_peft_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).exists()


def pattern_key(patterns: list[str], module: str) -> str | None:
    """PEFT's rule (``peft.utils.other.get_pattern_key``): first pattern matching a suffix."""
    for key in patterns:
        if re.match(_pattern_regex(key), module):
            return key
    return None


#: PEFT ``task_type`` -> the objective genbound evaluates (others: not said).
PEFT_TASK_TYPES = {"CAUSAL_LM": "causal_lm", "SEQ_CLS": "sequence_classification"}


def _pattern_regex(key: str) -> str:
    return rf"(.*\.)?({key})$"


def load_peft(
    path: Path, *, base: BaseModel | None, base_arg: bool, adapter_name: str = "default"
) -> Checkpoint:
    """Load one PEFT adapter folder (and its sub-folder adapters into ``others``)."""
    config_path = path / CONFIG
    config = read_json(config_path)
    check_json(config, CONFIG_SCHEMA, config_path)
    peft_type = config.get("peft_type", "").upper()
    if peft_type not in _READERS:
        raise input_error(
            config_path,
            "unsupported PEFT type",
            key="peft_type",
            expected="LORA (including DoRA and rsLoRA) or VERA",
            found=repr(config.get("peft_type")),
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().split("_")[0] in _BASE_CHANGING_INITS:
        raise input_error(
            config_path,
            "adapter initialised from the base weight",
            key="init_lora_weights",
            expected="an adapter whose update is relative to the unchanged base model",
            found=repr(init),
            hint="PiSSA/OLoRA-style adapters change the base weight; save them with "
            "path_initial_model_for_weight_conversion to get a plain LoRA update",
        )
    if base is None and not base_arg:
        ref = config.get("base_model_name_or_path")
        if ref and Path(ref).is_dir():
            base = BaseModel(ref)

    weight_file = next((path / f for f in WEIGHT_FILES if (path / f).exists()), None)
    if weight_file is None:
        raise input_error(
            path, "adapter weights missing", expected=" or ".join(WEIGHT_FILES), found="neither"
        )

    read = _READERS[peft_type]
    with TensorFile(weight_file) as tf:
        updates, dtype, notes = read.updates(tf, config, config_path, base)

    others = {}
    for sub in sorted(p for p in path.iterdir() if is_peft_dir(p)):
        others[sub.name] = load_peft(sub, base=base, base_arg=True, adapter_name=sub.name)

    hp, variant = read.hparams(config), read.variant(config)
    state = _trainer_state(path)
    return Checkpoint(
        path=path,
        format="peft",
        variant=variant,
        hparams=hp,
        updates=updates,
        dtype=dtype,
        base=base,
        base_ref=config.get("base_model_name_or_path"),
        objective=PEFT_TASK_TYPES.get(str(config.get("task_type") or "").upper()),
        metrics=state,
        adapter_name=adapter_name,
        others=others,
        notes=(*notes, *_trainer_loss_note(state)),
    )


def _lora_hparams(config: dict) -> Hyperparams:
    r = config.get("r", 8)
    alpha = float(config.get("lora_alpha", 8))
    rslora = config.get("use_rslora", False)
    targets = config.get("target_modules") or ()
    return Hyperparams(
        rank=r,
        alpha=alpha,
        scale=alpha / math.sqrt(r) if rslora else alpha / r,
        rslora=rslora,
        targets=(targets,) if isinstance(targets, str) else tuple(targets),
        extra={
            k: config[k]
            for k in ("rank_pattern", "alpha_pattern", "fan_in_fan_out", "modules_to_save", "bias")
            if config.get(k)
        },
    )


def _read_updates(tf: TensorFile, config: dict, config_path: Path, base: BaseModel | None):
    groups, saved = group_keys(tf, _LORA_SUFFIXES)

    fan_in_fan_out = config.get("fan_in_fan_out", False)
    rslora = config.get("use_rslora", False)
    r_default, alpha_default = config.get("r", 8), float(config.get("lora_alpha", 8))
    rank_pat = config.get("rank_pattern") or {}
    alpha_pat = config.get("alpha_pattern") or {}
    updates: dict[str, Update] = {}
    dtypes: set[torch.dtype] = set()
    notes: list[str] = []

    for module, roles in groups.items():
        emb = "emb_A" in roles or "emb_B" in roles
        a_role, b_role = ("emb_A", "emb_B") if emb else ("A", "B")
        for need, other in ((a_role, b_role), (b_role, a_role)):
            if need not in roles:
                raise input_error(
                    tf.path,
                    f"adapter factor missing for module {module!r}",
                    key=roles.get(other),
                    expected=f"both lora {a_role[-1]} and {b_role[-1]} tensors",
                    found=f"only {other[-1]}",
                )
        A, B = tf[roles[a_role]], tf[roles[b_role]]
        dtypes.add(A.dtype)
        if A.ndim != 2 or B.ndim != 2:
            raise input_error(
                tf.path,
                "unsupported adapter layer (convolution?)",
                key=roles[a_role],
                expected="2-D lora factors (Linear, Conv1D or Embedding)",
                found=f"shape {tuple(A.shape)}",
            )
        r = A.shape[0]
        if B.shape[1] != r:
            raise input_error(
                tf.path,
                f"lora factors of {module!r} disagree on the rank",
                key=roles[b_role],
                expected=f"B with {r} columns (A has {r} rows)",
                found=f"shape {tuple(B.shape)}",
            )
        rk = pattern_key(list(rank_pat), module)
        r_cfg = rank_pat[rk] if rk is not None else r_default
        if r_cfg != r:
            raise input_error(
                tf.path,
                f"rank of {module!r} does not match adapter_config.json",
                key=roles[a_role],
                expected=f"r = {r_cfg} (from {'rank_pattern[' + repr(rk) + ']' if rk else 'its r'})",
                found=f"A of shape {tuple(A.shape)}",
            )
        ak = pattern_key(list(alpha_pat), module)
        alpha = float(alpha_pat[ak]) if ak is not None else alpha_default
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        # An embedding's B (dim x r) @ A (r x vocab) maps one-hots to the hidden size;
        # its table is stored (vocab x dim), like a fan_in_fan_out weight.
        transposed = emb or fan_in_fan_out
        low = LowRankUpdate(
            name=module,
            param=module + ".weight",
            shape=(B.shape[0], A.shape[1]),
            transposed=transposed,
            base=base,
            B=B,
            A=A,
            scale=scale,
        )
        upd: Update = low
        if "magnitude" in roles:
            mag = tf[roles["magnitude"]].reshape(-1)
            if mag.numel() != B.shape[0]:
                raise input_error(
                    tf.path,
                    f"DoRA magnitude of {module!r} has the wrong length",
                    key=roles["magnitude"],
                    expected=f"{B.shape[0]} values (one per output)",
                    found=f"{mag.numel()}",
                )
            upd = DoraUpdate(
                name=module,
                param=low.param,
                shape=low.shape,
                transposed=transposed,
                base=base,
                lowrank=low,
                magnitude=mag,
            )
        updates[module] = upd
        if "B_bias" in roles:
            bias = tf[roles["B_bias"]]
            updates[module + ".bias"] = DenseUpdate(
                name=module + ".bias",
                param=module + ".bias",
                shape=tuple(bias.shape),
                base=base,
                value=lambda b=bias, s=scale: s * b,
                trainable=bias.numel(),
            )

    updates.update(saved_updates(tf, saved, base, dtypes, notes))
    updates, dtype = finished(tf, updates, dtypes, base)
    return updates, dtype, notes


@dataclass(frozen=True)
class _Reader:
    """How one PEFT type is read: its updates, hyper-parameters and registry variant."""

    updates: Callable[..., tuple[dict[str, Update], torch.dtype, list[str]]]
    hparams: Callable[[dict], Hyperparams]
    variant: Callable[[dict], str]


_READERS = {
    "LORA": _Reader(
        _read_updates, _lora_hparams, lambda c: "dora" if c.get("use_dora") else "lora"
    ),
    "VERA": _Reader(read_vera, vera_hparams, lambda c: "vera"),
}


def _trainer_state(path: Path) -> dict:
    """Losses a Trainer logged, from ``trainer_state.json`` (empty if absent).

    The Trainer logs, every ``logging_steps`` steps, the mean training loss over the steps
    since its previous log; so the last logged value is the mean over the last logging
    window, not over the epoch or the run. It is stored under that name:

    - ``last_logged_train_loss``: the last logged training loss (nats);
    - ``last_logged_train_loss_step``: the step it was logged at;
    - ``last_logged_train_loss_window``: the steps it is a mean over (from the previous
      logged loss, else from step 0);
    - ``logging_steps``: the Trainer's logging interval, when the state records it;
    - ``eval_loss``, ``eval_loss_step``: the last evaluation loss and its step;
    - ``run_mean_train_loss``: the mean training loss over the whole run, which the Trainer
      logs (as ``train_loss``) only when training ends, so a ``checkpoint-N`` folder saved
      during training lacks it;
    - ``global_step``; ``train_loss_history`` and ``eval_loss_history``: (step, loss) pairs.
    """
    state_path = path / "trainer_state.json"
    if not state_path.exists():
        return {}
    state = read_json(state_path)
    check_json(state, TRAINER_STATE_SCHEMA, state_path)
    history = state.get("log_history", [])
    train = [(h.get("step"), h["loss"]) for h in history if "loss" in h]
    evals = [(h.get("step"), h["eval_loss"]) for h in history if "eval_loss" in h]
    out: dict = {
        "global_step": state.get("global_step"),
        "train_loss_history": train,
        "eval_loss_history": evals,
    }
    if state.get("logging_steps") is not None:
        out["logging_steps"] = state["logging_steps"]
    if train:
        step, loss = train[-1]
        previous = train[-2][0] if len(train) > 1 else 0
        out["last_logged_train_loss"] = loss
        out["last_logged_train_loss_step"] = step
        if step is not None and previous is not None:
            out["last_logged_train_loss_window"] = step - previous
    if evals:
        out["eval_loss"], out["eval_loss_step"] = evals[-1][1], evals[-1][0]
    run_means = [h["train_loss"] for h in history if "train_loss" in h]
    if run_means:
        out["run_mean_train_loss"] = run_means[-1]
    return out


def _trainer_loss_note(metrics: dict) -> list[str]:
    """A sentence saying what the recorded training loss is a mean over."""
    if "last_logged_train_loss" not in metrics:
        return []
    window = metrics.get("last_logged_train_loss_window")
    over = f"the last logging window of {window} steps" if window else "the last logging window"
    return [
        f"trainer_state.json: last_logged_train_loss is the last logged training loss "
        f"(mean over {over}, step {metrics['last_logged_train_loss_step']}), not a mean "
        "over the epoch or the run"
    ]
