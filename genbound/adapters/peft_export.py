"""Export LoRA-family runs (lora, lora_plus, asym: one link of low-rank layers) as a PEFT
adapter folder.

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module path>.lora_A.weight`` (r x m) and ``.lora_B.weight`` (n x r);
heads are stored as ``modules_to_save`` (``base_model.model.<head>.<tensor>``).
``PeftModel.from_pretrained(base, folder)`` loads it and gives W0 + s B A.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from genbound.adapters.layers import LowRankLayer
from genbound.adapters.registry import Variant, variants
from genbound.errors import GenboundError
from genbound.io import save_tensors
from genbound.jsonio import dumps_json

if TYPE_CHECKING:
    from genbound.adapters.handle import AdapterHandle


def exportable(variant: Variant) -> bool:
    """True for a variant whose runs are PEFT LoRA adapters: one link of low-rank layers."""
    return (
        variant.layer is not None
        and issubclass(variant.layer, LowRankLayer)
        and not variant.chained
    )


def export_peft(
    handle: AdapterHandle, out_dir: str | Path, *, base_model_name_or_path: str | None = None
) -> Path:
    """Write a PEFT LoRA adapter folder that ``PeftModel.from_pretrained`` loads.

    Only for unchained variants whose layers are low-rank (dW = s B A, one link:
    ``lora``, ``lora_plus`` and ``asym``). Heads are saved as ``modules_to_save``. Asym's
    frozen A is stored as an ordinary ``lora_A``.
    """
    if not exportable(handle.variant):
        names = ", ".join(n for n, v in variants().items() if exportable(v))
        raise GenboundError(
            f"export_peft: expected a run of {names}, found {handle.variant.name!r}; other "
            "variants are not PEFT LoRA adapters."
        )
    transposed = {layer.transposed for layer in handle.layers.values()}
    if len(transposed) > 1:
        raise GenboundError(
            "export_peft: expected all adapted layers to be Linear or all Conv1D (PEFT's "
            "fan_in_fan_out is global), found both."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in handle.layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.A.detach().clone()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.B.detach().clone()
    heads = sorted(handle.heads)
    for d in handle.dense:
        if d.head:
            tensors[f"base_model.model.{d.param}"] = d.parameter.detach().clone()
    hp = handle.hparams
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": hp["rank"],
        "lora_alpha": hp["alpha"],
        "use_rslora": bool(hp.get("rslora")),
        "target_modules": sorted(handle.layers),
        "modules_to_save": heads or None,
        "fan_in_fan_out": transposed == {True},
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(dumps_json(config))
    save_tensors(
        {k: v.contiguous().cpu() for k, v in tensors.items()}, out / "adapter_model.safetensors"
    )
    return out
