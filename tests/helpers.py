"""Assertions shared by the tests."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq

from genbound.tasks.texts import LabelledTexts


def np_kl_inverse(q: float, c: float) -> float:
    """max {p : kl(q || p) <= c} by scipy's root finder (the reference for genbound's)."""

    def kl(p):
        a = q * math.log(q / p) if q > 0 else 0.0
        return a + (1 - q) * math.log((1 - q) / (1 - p)) - c

    hi = float(np.nextafter(1.0, 0.0))
    return hi if kl(hi) < 0 else brentq(kl, q, hi, xtol=1e-16, rtol=1e-15)


def assert_rel_close(actual, expected, rtol: float, what: str = "") -> None:
    """||actual - expected|| <= rtol * ||expected|| (Frobenius), in float64."""
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    err = float(torch.linalg.vector_norm(a - e))
    ref = float(torch.linalg.vector_norm(e))
    assert err <= rtol * max(ref, 1e-300), (
        f"{what}: relative error {err / max(ref, 1e-300):.3g} > {rtol}"
    )


def merged_from_genbound(ckpt, base_state: dict) -> dict:
    """Base state dict with every genbound update added (stored orientation), in float64."""
    out = {k: v.to(torch.float64).clone() for k, v in base_state.items()}
    for u in ckpt.updates.values():
        key = ckpt.base.resolve(u.param)
        out[key] = out[key] + u.delta(torch.float64, stored=True)
    return out


def numpy_svals(x: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(x.detach().to(torch.float64).numpy(), compute_uv=False)


WORDS = [
    "good",
    "bad",
    "fine",
    "awful",
    "great",
    "meh",
    "ok",
    "sad",
    "happy",
    "film",
    "day",
    "food",
]


def tiny_bert_with_tokenizer(tmp_path):
    """A saved tiny BERT classifier with a word-level tokenizer over WORDS; returns its folder."""
    from transformers import BertTokenizerFast

    base_dir = tmp_path / "base"
    from conftest import tiny_bert

    tiny_bert().save_pretrained(base_dir)
    vocab = tmp_path / "tokenizer" / "vocab.txt"
    vocab.parent.mkdir(exist_ok=True)
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # read from a folder: transformers 5 ignores BertTokenizerFast(vocab_file=...)
    BertTokenizerFast.from_pretrained(vocab.parent).save_pretrained(base_dir)
    return base_dir


def random_texts(n, seed):
    """n random texts of 1-8 WORDS with random labels of 3 classes."""
    g = np.random.default_rng(seed)
    texts = tuple(" ".join(g.choice(WORDS, size=g.integers(1, 9))) for _ in range(n))
    return LabelledTexts(
        texts, torch.tensor(g.integers(0, 3, size=n)), ("neg", "neu", "pos"), "random"
    )


def tiny_bert_lora(tmp_path, base_dir, targets, layers=None, n_train=10):
    """A PEFT LoRA (r=2, random factors, trained classifier) of the base at ``base_dir``, saved
    under tmp_path/adapter; returns (its Checkpoint, PEFT's merged model in eval mode)."""
    from conftest import randomize_adapters
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from genbound import load_checkpoint

    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    pm = get_peft_model(
        model,
        LoraConfig(
            r=2, target_modules=targets, layers_to_transform=layers, modules_to_save=["classifier"]
        ),
    )
    randomize_adapters(pm, scale=0.5)
    pm.save_pretrained(tmp_path / "adapter")
    return load_checkpoint(tmp_path / "adapter", n_train=n_train), pm.merge_and_unload().eval()


def tiny_run(tmp_path, name="run", **manifest):
    """A tiny valid genbound run folder (one selector update of a 4 x 10 tensor ``x.weight``);
    ``manifest`` adds or replaces top-level fields."""
    from genbound.checkpoint import write_run

    tensors = {"B": torch.ones(4, 2), "i": torch.tensor([0, 9])}
    updates = {"x": {"shape": [4, 10], "link": {"kind": "selector", "B": "B", "indices": "i"}}}
    return write_run(tmp_path / name, {"variant": "cla", "updates": updates, **manifest}, tensors)
