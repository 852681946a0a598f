"""Tiny causal language models for the tests: random Llama and GPT-2 bases saved with a real
WordPiece tokenizer (offline MiniLM's), PEFT LoRA adapters trained a few dozen steps by the
Hugging Face Trainer or by a plain torch loop, and data files of real texts.

Everything is read from local folders (``local_files_only=True``); nothing is downloaded.
:func:`lm_bundle` builds each kind once per test session (and per xdist worker).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

#: LoRA target of each kind of base (the attention's query projection is among them).
TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
#: The merged weight whose gradient the tests check, per kind.
QUERY_WEIGHT = {
    "llama": "model.layers.0.self_attn.q_proj.weight",
    "gpt2": "transformer.h.0.attn.c_attn.weight",
}
#: How each kind's adapter is trained.
TRAINED_BY = {"llama": "trainer", "gpt2": "loop"}
TRAIN_STEPS = 30
PRETRAIN_STEPS = 60


def minilm_tokenizer():
    """MiniLM's WordPiece tokenizer (vocabulary 30,522; [CLS] ... [SEP] around each text)."""
    from transformers import AutoTokenizer

    from genbound.datasets import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def tiny_causal_lm(kind: str, vocab_size: int, seed: int = 0):
    """A random causal LM (hidden 32, 2 layers, 128 positions) of ``kind`` llama or gpt2."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        )
        return LlamaForCausalLM(cfg).eval()
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    return GPT2LMHeadModel(cfg).eval()


def save_base(folder: Path, kind: str, texts: list[str] = ()) -> Path:
    """Save a tiny ``kind`` causal LM with MiniLM's tokenizer in ``folder``; the folder.

    The random model is first trained on ``texts`` (all its weights,
    :data:`PRETRAIN_STEPS` steps), so that it predicts some tokens right: a random one
    gets every top-1 prediction wrong, which would leave the error untested."""
    tok = minilm_tokenizer()
    model = tiny_causal_lm(kind, len(tok))
    if texts:
        train_with_loop(model, tok, list(texts), steps=PRETRAIN_STEPS, lr=2e-2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tweets(n: int, start: int = 0) -> list[str]:
    """Tweets ``start`` to ``start + n`` of genbound's data set, whitespace normalised (one
    line each)."""
    from genbound.datasets import load_tweets

    return [" ".join(t.split()) for t in load_tweets(start + n).texts[start:]]


def split_pair(text: str) -> tuple[str, str]:
    """(prompt, response) of a text split at a word boundary: the first third of its words,
    and a space followed by the rest (so the prompt's tokens prefix the whole text's)."""
    words = text.split()
    k = max(1, len(words) // 3)
    return " ".join(words[:k]), " " + " ".join(words[k:]) if words[k:] else " ."


def _encodings(tok, texts: list[str], max_length: int) -> list[dict]:
    return [tok(t, truncation=True, max_length=max_length) for t in texts]


def train_with_trainer(model, tok, texts: list[str], out: Path, steps: int = TRAIN_STEPS):
    """``steps`` steps of transformers.Trainer (causal-LM collator, no reports, no saves)."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    trainer = Trainer(
        model=model, args=args, train_dataset=_encodings(tok, texts, 64), data_collator=collator
    )
    trainer.train()
    return model.eval()


def train_with_loop(model, tok, texts: list[str], steps: int = TRAIN_STEPS, lr: float = 1e-2):
    """``steps`` steps of AdamW on the model's own shifted loss (its trainable parameters),
    batches of 4 texts (right padded, padding labelled -100)."""
    enc = _encodings(tok, texts, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        rows = [enc[(4 * step + j) % len(enc)]["input_ids"] for j in range(4)]
        width = max(len(r) for r in rows)
        ids = torch.zeros((4, width), dtype=torch.int64)
        mask = torch.zeros((4, width), dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
    return model.eval()


def save_trained_adapter(base_dir: Path, folder: Path, kind: str, texts: list[str]) -> Path:
    """A PEFT LoRA (r 4, alpha 8, task_type CAUSAL_LM) of the base at ``base_dir`` trained
    on ``texts`` as :data:`TRAINED_BY` says, saved in ``folder``; the folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = minilm_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS[kind], lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    if TRAINED_BY[kind] == "trainer":
        train_with_trainer(model, tok, texts, folder.with_name(folder.name + "-trainer"))
    else:
        train_with_loop(model, tok, texts)
    model.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_txt(path: Path, rows: list[dict]) -> Path:
    """One ``text`` per line."""
    path.write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    return path


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "txt": write_txt}


def rows_of(texts: list[str]) -> list[dict]:
    """Rows with ``text``, ``prompt`` and ``response`` (:func:`split_pair`) columns."""
    rows = []
    for t in texts:
        p, r = split_pair(t)
        rows.append({"text": t, "prompt": p, "response": r})
    return rows


def write_split(folder: Path, name: str, rows: list[dict], ext: str = "jsonl") -> Path:
    """``rows`` written to ``folder/name.ext`` (jsonl, csv or txt); the path."""
    return WRITERS[ext](folder / f"{name}.{ext}", rows)


@dataclass(frozen=True)
class LMBundle:
    """A base folder, a trained adapter of it, and train/test texts (rows and .jsonl files)."""

    kind: str
    base: Path
    adapter: Path
    train_rows: list[dict]
    test_rows: list[dict]
    train_file: Path
    test_file: Path


N_TRAIN, N_TEST, PRETRAIN_TEXTS = 20, 12, 80
_BUNDLES: dict[tuple[str, str], LMBundle] = {}


def lm_bundle(tmp_path_factory, kind: str) -> LMBundle:
    """The ``kind`` (llama or gpt2) base, adapter and data, built once per session."""
    key = (str(tmp_path_factory.getbasetemp()), kind)
    if key not in _BUNDLES:
        root = tmp_path_factory.mktemp(f"lm-{kind}")
        texts = tweets(N_TRAIN + N_TEST)
        train_rows, test_rows = rows_of(texts[:N_TRAIN]), rows_of(texts[N_TRAIN:])
        base = save_base(root / "base", kind, tweets(PRETRAIN_TEXTS, start=N_TRAIN + N_TEST))
        adapter = save_trained_adapter(base, root / "adapter", kind, texts[:N_TRAIN])
        _BUNDLES[key] = LMBundle(
            kind,
            base,
            adapter,
            train_rows,
            test_rows,
            write_split(root, "train", train_rows),
            write_split(root, "test", test_rows),
        )
    return _BUNDLES[key]
