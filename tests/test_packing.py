"""pack_by_tokens: the same examples, smaller batches, the same per-example losses."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import random_texts, tiny_bert_with_tokenizer

from genbound.tasks.hf_text import TextClassificationTask
from genbound.tasks.objective import Batch, cross_entropy_loss
from genbound.tasks.packing import pack_by_tokens


def _per_example(model, batches):
    out = {}
    with torch.no_grad():
        for b in batches:
            losses = cross_entropy_loss(model, b)
            for i in range(len(b)):
                ids = b.inputs["input_ids"][i][b.inputs["attention_mask"][i].bool()]
                out[tuple(ids.tolist())] = float(losses[i])
    return out


def test_same_examples_same_losses_within_budget(tmp_path):
    base_dir = tiny_bert_with_tokenizer(tmp_path)
    data = random_texts(70, 0)
    task = TextClassificationTask(data, data, base_path=base_dir, batch_size=32)
    model = task.build_model(None, attn_implementation="eager")
    batches = task.tokenized_batches(data, base_dir)
    packed = pack_by_tokens(batches, max_tokens=40, max_rows=16)
    assert len(packed) > len(batches)
    rows = lambda bs: Counter(  # noqa: E731
        (
            tuple(b.inputs["input_ids"][i][b.inputs["attention_mask"][i].bool()].tolist()),
            int(b.labels[i]),
        )
        for b in bs
        for i in range(len(b))
    )
    assert rows(packed) == rows(batches)
    for b in packed:
        width = b.inputs["input_ids"].shape[1]
        assert len(b) <= 16 and (len(b) * width <= 40 or len(b) == 1)
        assert width == int(b.inputs["attention_mask"].sum(1).max())  # no extra padding
    before, after = _per_example(model, batches), _per_example(model, packed)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_other_batches_are_left_as_they_are():
    plain = [Batch(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64))]
    assert pack_by_tokens(plain) == plain
    left = {"input_ids": torch.ones(2, 3, dtype=torch.int64),
            "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}  # fmt: skip
    left_padded = [Batch(left, torch.zeros(2, dtype=torch.int64))]
    assert pack_by_tokens(left_padded) == left_padded
