"""``load_checkpoint``: detect a checkpoint's format and read it."""

from __future__ import annotations

import os
from pathlib import Path

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Checkpoint
from genbound.checkpoint.native import is_run_dir, load_run
from genbound.checkpoint.peft import is_peft_dir, load_peft
from genbound.checkpoint.state_dicts import load_state_dicts
from genbound.checkpoint.tensors import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from genbound.errors import input_error


def load_checkpoint(
    path: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    adapter: str | None = None,
    n_train: int | None = None,
    trust_code: bool = False,
) -> Checkpoint:
    """Read a fine-tuned checkpoint.

    Args:
        path: one of
            * a PEFT adapter folder (``adapter_config.json``), e.g. a Trainer's ``checkpoint-N/``;
            * a genbound run folder (``genbound.json``);
            * a fine-tuned model (folder or ``.safetensors``/``.pt``/``.bin`` file) with ``base``.
        base: the base model (folder or tensor file). Defaults to what the checkpoint names
            (PEFT's ``base_model_name_or_path`` when it is a local folder; a genbound run's
            ``base_model``).
        adapter: for PEFT folders with several adapters, the sub-folder adapter to return
            (default: the top-level one, with the others in ``checkpoint.others``).
        n_train: the number of training examples, when the checkpoint does not record it.
        trust_code: let a genbound run's ``base_model.python`` name code that is not one of
            genbound's own base-model providers (:data:`genbound.trust.BASE_MODELS`). Without
            it such a reference is refused (:class:`genbound.trust.UntrustedCode`) unless
            ``base`` is given, and nothing the checkpoint names is imported.

    Returns:
        A :class:`Checkpoint`. Nothing is written, whether loading succeeds or fails.
    """
    p = Path(path)
    if not p.exists():
        raise input_error(
            p, "checkpoint not found", expected="a checkpoint folder or file", found="no such path"
        )
    if not os.access(p, os.R_OK):
        raise input_error(p, "checkpoint not readable", expected="read permission", found="none")
    base_model = BaseModel(base) if base is not None else None
    if is_peft_dir(p):
        ckpt = load_peft(p, base=base_model, base_arg=base is not None)
        if adapter is not None and adapter != "default":
            if adapter not in ckpt.others:
                raise input_error(
                    p,
                    "adapter not found",
                    key=adapter,
                    expected="a sub-folder adapter",
                    found=", ".join(["default", *ckpt.others]),
                )
            ckpt = ckpt.others[adapter]
    elif is_run_dir(p):
        ckpt = load_run(p, base=base_model, base_arg=base is not None, trust_code=trust_code)
    elif _is_model(p):
        ckpt = load_state_dicts(p, base=base_model)
    else:
        inner = (
            sorted(c.name for c in p.iterdir() if c.is_dir() and (is_peft_dir(c) or is_run_dir(c)))
            if p.is_dir()
            else []
        )
        raise input_error(
            p,
            "not a checkpoint genbound can read",
            expected="adapter_config.json (PEFT), genbound.json (genbound run), or model weights with --base",
            found=(
                f"a folder of {len(inner)} checkpoints ({', '.join(inner[:3])}...); pass one of them"
                if inner
                else "none of these"
            ),
        )
    if n_train is not None:
        if n_train <= 0:
            raise input_error(
                p, "invalid training-set size", expected="n_train > 0", found=str(n_train)
            )
        from dataclasses import replace

        ckpt = replace(ckpt, n_train=int(n_train))
    return ckpt


def _is_model(p: Path) -> bool:
    if p.is_file():
        return p.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
    return any(
        (p / f).exists()
        for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )
