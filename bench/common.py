"""Shared by the benchmarks: the first n labelled tweets, tokenized to a fixed length."""

from __future__ import annotations


def load_data(n: int, seq_len: int, model_path: str):
    """(input_ids (n x seq_len), attention_mask, labels (n,)) padded to ``seq_len``."""
    from transformers import AutoTokenizer

    from genbound.datasets import load_tweets

    data = load_tweets(n)
    tok = AutoTokenizer.from_pretrained(model_path)
    enc = tok(
        list(data.texts),
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"], data.labels
