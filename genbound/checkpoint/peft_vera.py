"""Read PEFT VeRA adapters: dW = diag(b) B diag(d) A per module (PEFT's ``VeraLayer``).

The folder holds ``adapter_config.json`` (``peft_type`` ``"VERA"``) and
``adapter_model.safetensors`` with ``base_model.model.<module>.vera_lambda_b`` (n,) and
``.vera_lambda_d`` (r,) per module and the shared projections ``base_model.vera_A``
(r x m_max) and ``base_model.vera_B`` (n_max x r), of which each module uses A[:, :m] and
B[:n, :]. There is no scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Hyperparams
from genbound.checkpoint.peft_tensors import finished, group_keys, saved_updates
from genbound.checkpoint.tensors import TensorFile
from genbound.checkpoint.updates import Update, VeraUpdate
from genbound.errors import input_error

_VERA_SUFFIXES = {".vera_lambda_b": "b", ".vera_lambda_d": "d"}
#: The shared projections a VeRA adapter saves (``save_projection``, PEFT's default).
_VERA_SHARED = ("base_model.vera_A", "base_model.vera_B")


def read_vera(tf: TensorFile, config: dict, config_path: Path, base: BaseModel | None):
    """VeRA: dW = diag(b) B diag(d) A per module, with A = vera_A[:, :m] and
    B = vera_B[:n, :] the module's slices of the shared projections (PEFT's ``VeraLayer``).
    The input size m of each module comes from the base model, which is required."""
    missing = [k for k in _VERA_SHARED if k not in tf.keys()]
    if missing:
        raise input_error(
            tf.path,
            "VeRA projections missing",
            key=missing[0],
            expected="the shared projections base_model.vera_A and base_model.vera_B "
            "(saved with save_projection=true, PEFT's default)",
            found="none",
            hint="genbound does not redraw them from projection_prng_key",
        )
    if base is None:
        raise input_error(
            config_path,
            "a VeRA adapter needs its base model",
            key="base_model_name_or_path",
            expected="a base model folder (the input sizes of the adapted layers)",
            found=repr(config.get("base_model_name_or_path")),
            hint="pass --base PATH (or base= to load_checkpoint)",
        )
    shared_a, shared_b = (tf[k] for k in _VERA_SHARED)
    groups, saved = group_keys(tf, _VERA_SUFFIXES, skip=_VERA_SHARED)
    transposed = bool(config.get("fan_in_fan_out", False))
    updates: dict[str, Update] = {}
    dtypes: set[torch.dtype] = set()
    for module, roles in groups.items():
        for role in ("b", "d"):
            if role not in roles:
                raise input_error(
                    tf.path,
                    f"VeRA vector missing for module {module!r}",
                    key=next(iter(roles.values())),
                    expected="both vera_lambda_b and vera_lambda_d",
                    found=f"only {next(iter(roles))}",
                )
        b, d = tf[roles["b"]].reshape(-1), tf[roles["d"]].reshape(-1)
        dtypes.add(b.dtype)
        param = module + ".weight"
        if base.resolve(param) is None:
            raise input_error(
                base.path,
                f"the adapter modifies {param!r}, which the base model lacks",
                key=param,
                expected="a base model with that tensor",
                found="no such tensor",
            )
        stored = tuple(base.shape(param))
        n, m = (stored[1], stored[0]) if transposed else (stored[0], stored[1])
        r = d.numel()
        fits = b.numel() == n and shared_a.shape[0] == r and shared_b.shape[1] == r
        if not (fits and shared_a.shape[1] >= m and shared_b.shape[0] >= n):
            raise input_error(
                tf.path,
                f"VeRA tensors of {module!r} do not fit its layer ({n} x {m})",
                key=roles["b"],
                expected=f"b ({n},), d (r,), vera_A (r x >= {m}), vera_B (>= {n} x r)",
                found=f"b {tuple(b.shape)}, d {tuple(d.shape)}, vera_A "
                f"{tuple(shared_a.shape)}, vera_B {tuple(shared_b.shape)}",
            )
        updates[module] = VeraUpdate(
            name=module,
            param=param,
            shape=(n, m),
            transposed=transposed,
            base=base,
            B=shared_b[:n, :r].clone(),
            A=shared_a[:r, :m].clone(),
            b=b,
            d=d,
        )
    notes: list[str] = []
    updates.update(saved_updates(tf, saved, base, dtypes, notes))
    updates, dtype = finished(tf, updates, dtypes, base, "vera_lambda_b/vera_lambda_d tensors")
    return updates, dtype, notes


def vera_hparams(config: dict) -> Hyperparams:
    """The hyper-parameters of a VeRA adapter: r (PEFT's default 256), the targets and
    PEFT's projection seed, d_initial, fan_in_fan_out and modules_to_save."""
    targets = config.get("target_modules") or ()
    return Hyperparams(
        rank=config.get("r", 256),
        targets=(targets,) if isinstance(targets, str) else tuple(targets),
        extra={
            k: config[k]
            for k in ("projection_prng_key", "d_initial", "fan_in_fan_out", "modules_to_save")
            if config.get(k) is not None
        },
    )
