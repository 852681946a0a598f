"""Tiny causal language models for the tests: random Llama and GPT-2 bases saved with a real
WordPiece tokenizer (offline MiniLM's), PEFT LoRA adapters trained a few dozen steps by the
Hugging Face Trainer or by a plain torch loop, and data files of real texts.

Everything is read from local folders (``local_files_only=True``); nothing is downloaded.
:func:`lm_bundle` builds each kind once per test session (and per xdist worker).

The plain reference (:func:`reference`, :func:`reference_padded`): PEFT's merged model in
float64 run by transformers on each text as the tokenizer encodes it, every predicted
token's loss, top-1 error and probability taken from the full logits.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
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


# ---------------------------------------------------------------- the plain reference
@dataclass
class RefText:
    """One text as plain torch scores it: its token ids, the first predicted position, and
    per predicted token the loss (nats), top-1 error, probability of the right token and
    margin (|its logit - the largest other logit|: how far the top-1 decision is from a
    tie)."""

    ids: list[int]
    start: int
    losses: np.ndarray
    errors: np.ndarray
    probs: np.ndarray
    margins: np.ndarray

    @property
    def key(self) -> tuple:
        return tuple(self.ids), self.start


def base_tokenizer(bundle):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundle.base, local_files_only=True)


_MERGED: dict = {}


def merged_model(bundle):
    """PEFT's merge_and_unload() of the adapter on the base, in float64 (torch's SDPA:
    transformers' eager attention takes its softmax in float32, where a float64 padding
    mask's minimum becomes -inf and a left-padded row turns to nan)."""
    if bundle.adapter not in _MERGED:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            bundle.base, local_files_only=True, attn_implementation="sdpa"
        )
        merged = PeftModel.from_pretrained(base, bundle.adapter).merge_and_unload()
        _MERGED[bundle.adapter] = merged.double().eval()
    return _MERGED[bundle.adapter]


def max_length_of(tok, model) -> int:
    return min(tok.model_max_length, model.config.max_position_embeddings)


def encode(tok, rows, form: str, max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, first predicted position) per row, as tokenizer(..., truncation=True,
    max_length=L) gives them; for pairs, the prompt's tokens (without the end-of-sequence
    token the tokenizer appends, which the whole text's encoding does not hold there) are
    context."""
    out = []
    for r in rows:
        if form == "text":
            out.append((tok(r["text"], truncation=True, max_length=max_length)["input_ids"], 1))
            continue
        full = tok(r["prompt"] + r["response"], truncation=True, max_length=max_length)
        prompt = tok(r["prompt"], truncation=True, max_length=max_length)["input_ids"]
        if prompt[-1] in tok.all_special_ids:
            prompt = prompt[:-1]
        assert full["input_ids"][: len(prompt)] == prompt  # the split is at a word boundary
        out.append((full["input_ids"], max(1, len(prompt))))
    return out


def _score(logits: torch.Tensor, ids: list[int], start: int) -> tuple:
    """Per predicted token t >= start: -log p(ids[t]), argmax != ids[t], p(ids[t]) and the
    margin of the right token's logit to the largest other one."""
    target = torch.tensor(ids[start:])
    rows = logits[start - 1 : len(ids) - 1].double()
    lp = torch.log_softmax(rows, dim=-1).gather(1, target[:, None])[:, 0]
    wrong = rows.argmax(-1) != target
    right = rows.gather(1, target[:, None])[:, 0]
    other = rows.scatter(1, target[:, None], -math.inf).max(-1).values
    return (-lp).numpy(), wrong.double().numpy(), lp.exp().numpy(), (right - other).abs().numpy()


def reference(bundle, rows, form: str, max_length: int | None = None) -> list[RefText]:
    """Each text run alone (no padding) through the merged model."""
    tok, model = base_tokenizer(bundle), merged_model(bundle)
    length = max_length or max_length_of(tok, model)
    out = []
    with torch.no_grad():
        for ids, start in encode(tok, rows, form, length):
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            out.append(RefText(ids, start, *_score(logits, ids, start)))
    return out


def reference_padded(bundle, rows, form: str, side: str, max_length: int | None = None):
    """The texts in one batch padded on ``side`` (left: explicit position ids)."""
    tok, model = base_tokenizer(bundle), merged_model(bundle)
    enc = encode(tok, rows, form, max_length or max_length_of(tok, model))
    width = max(len(ids) for ids, _ in enc)
    ids_b = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(enc), width), dtype=torch.int64)
    for i, (ids, _) in enumerate(enc):
        cols = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        ids_b[i, cols] = torch.tensor(ids)
        mask[i, cols] = 1
    kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if side == "left" else {}
    with torch.no_grad():
        logits = model(input_ids=ids_b, attention_mask=mask, **kwargs).logits
    out = []
    for i, (ids, start) in enumerate(enc):
        off = width - len(ids) if side == "left" else 0
        out.append(RefText(ids, start, *_score(logits[i, off : off + len(ids)], ids, start)))
    return out


#: The smallest margin (logits) at which a float32 model's top-1 decision is compared with
#: the float64 reference's: float32 logits of these models are good to about 1e-6.
MIN_MARGIN = 1e-5


def assert_decisions_well_posed(ref: list[RefText]) -> None:
    """No right token's logit is within :data:`MIN_MARGIN` of another's, so a float32 top-1
    error can be compared exactly with the reference's."""
    low = min(float(r.margins.min()) for r in ref)
    assert low > MIN_MARGIN, f"a top-1 decision is a near-tie (margin {low:.3g}); reseed"
