"""A full fine-tune given as two state dicts: the base and the fine-tuned model.

Every tensor whose values differ is a dense update; a tensor the base lacks (a new
head) is an update from zero. Tensors are compared one at a time and read lazily
afterwards, so neither model is ever in memory at once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Checkpoint, Hyperparams
from genbound.checkpoint.updates import DenseUpdate, Update
from genbound.errors import input_error


def load_state_dicts(finetuned: Path, *, base: BaseModel | None) -> Checkpoint:
    """Compare a fine-tuned model (folder or tensor file) with ``base``."""
    if base is None:
        raise input_error(
            finetuned,
            "a full fine-tune needs its base model",
            expected="--base PATH (the pretrained model's folder or state dict)",
            found="no base",
        )
    tuned = BaseModel(finetuned)  # same lazy reader: folder, shards or a single file
    updates: dict[str, Update] = {}
    dtypes: set[torch.dtype] = set()
    for key in tuned.keys():
        shape = tuned.shape(key)
        value = tuned.tensor(key)
        if not value.is_floating_point():
            continue
        name = key[: -len(".weight")] if key.endswith(".weight") and len(shape) == 2 else key
        base_key = base.resolve(key)
        if base_key is not None:
            if tuple(base.shape(base_key)) != tuple(shape):
                raise input_error(
                    base.path,
                    "base tensor shape does not match the fine-tuned model",
                    key=base_key,
                    expected=f"shape {tuple(shape)} (as in {finetuned})",
                    found=f"shape {tuple(base.shape(base_key))}",
                )
            if torch.equal(value, base.tensor(base_key).to(value.dtype)):
                continue
        updates[name] = DenseUpdate(
            name=name,
            param=key,
            shape=shape,
            base=base,
            value=lambda k=key: tuned.tensor(k),
            relative=base_key is not None,
            new=base_key is None,
        )
        dtypes.add(value.dtype)
    if not updates:
        raise input_error(
            finetuned,
            "no tensor differs from the base model",
            expected="a fine-tuned model",
            found=f"{len(tuned.keys())} identical tensors",
        )
    dtype = max(dtypes, key=lambda d: torch.finfo(d).bits)
    return Checkpoint(
        path=finetuned,
        format="state_dicts",
        variant="fft",
        hparams=Hyperparams(),
        updates=updates,
        dtype=dtype,
        base=base,
        base_ref=str(base.path),
    )
