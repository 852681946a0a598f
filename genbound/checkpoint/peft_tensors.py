"""Tensor keys of PEFT adapter files, shared by the LoRA and VeRA readers.

Keys look like ``base_model.model.<module>.<suffix>`` (:data:`PREFIX`); a key with a
known suffix is one factor of its module's adapter, any other key a whole saved tensor
(``modules_to_save``, trained biases, resized embeddings).
"""

from __future__ import annotations

import torch

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.tensors import TensorFile
from genbound.checkpoint.updates import DenseUpdate, Update
from genbound.errors import input_error

PREFIX = "base_model.model."


def group_keys(
    tf: TensorFile, suffixes: dict[str, str], skip: tuple[str, ...] = ()
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The adapter's tensor keys: ``(groups, saved)``. ``groups`` maps a module path to
    {role: key} for keys ending with one of ``suffixes`` (suffix -> role); ``saved`` maps
    the state-dict name of every other key (a whole saved tensor) to its key. Keys in
    ``skip`` are left out."""
    groups: dict[str, dict[str, str]] = {}
    saved: dict[str, str] = {}
    for key in tf.keys():
        if key in skip:
            continue
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for suffix, role in suffixes.items():
            if name.endswith(suffix):
                groups.setdefault(name[: -len(suffix)], {})[role] = key
                break
        else:
            saved[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = key
    return groups, saved


def saved_updates(
    tf: TensorFile, saved: dict[str, str], base: BaseModel | None, dtypes: set, notes: list
) -> dict[str, Update]:
    """Dense updates of the tensors saved whole (``modules_to_save``, trained biases),
    relative to the base model's (W0 = 0 for a tensor the base lacks); their dtypes go into
    ``dtypes``, and a note into ``notes`` for each when no base model is known."""
    updates: dict[str, Update] = {}
    for name, key in saved.items():
        shape = tf.shape(key)
        tf[key]  # read once now so that NaN/Inf fail at load time, not mid-analysis
        in_base = base is not None and base.resolve(name) is not None
        mod = name[: -len(".weight")] if name.endswith(".weight") else name
        updates[mod] = DenseUpdate(
            name=mod,
            param=name,
            shape=shape,
            base=base,
            value=lambda k=key, f=tf.path: TensorFile(f)[k],
            relative=True,
            new=base is not None and not in_base,
        )
        dtypes.add(tf.dtype(key))
        if base is None:
            notes.append(
                f"{name}: saved whole (modules_to_save or bias); its update needs the base model"
            )
    return updates


def finished(
    tf: TensorFile,
    updates: dict[str, Update],
    dtypes: set,
    base: BaseModel | None,
    expected: str = "lora_A/lora_B tensors",
) -> tuple[dict[str, Update], torch.dtype]:
    """``(updates, dtype)`` once every update is read: an error when there is none (saying
    ``expected``) or one does not fit the base model; the dtype is the widest floating
    dtype stored."""
    if not updates:
        raise input_error(tf.path, "no adapter tensors", expected=expected, found="none")
    if base is not None:
        for u in updates.values():
            check_against_base(u, base)
    dtype = max(dtypes, key=lambda d: torch.finfo(d).bits if d.is_floating_point else 0)
    return updates, dtype


def check_against_base(u: Update, base: BaseModel) -> None:
    """Raise when an update's shape does not fit the base tensor it modifies."""
    if u.is_new:
        return
    if base.resolve(u.param) is None:
        raise input_error(
            base.path,
            f"the adapter modifies {u.param!r}, which the base model lacks",
            key=u.param,
            expected="a base model with that tensor",
            found="no such tensor",
            hint="Check that --base points to the model the adapter was trained on",
        )
    stored = base.shape(u.param)
    want = tuple(reversed(u.shape)) if u.transposed else tuple(u.shape)
    if tuple(stored) != want:
        hint = None
        if tuple(stored) == tuple(reversed(want)):
            hint = "The weight is stored transposed: for Conv1D layers set fan_in_fan_out=true"
        raise input_error(
            base.path,
            "base tensor shape does not match the adapter",
            key=u.param,
            expected=f"shape {want} (update {u.shape}{', stored transposed' if u.transposed else ''})",
            found=f"shape {tuple(stored)}",
            hint=hint,
        )
