"""The process-wide cache of hidden states: bounded in entries and bytes, clearable, and a
cleared or evicted entry is computed again with the same values."""

from __future__ import annotations

import pytest
import torch
from helpers import random_texts, tiny_bert_with_tokenizer

from genbound.errors import GenboundError
from genbound.tasks.activation_cache import MAX_BYTES, MAX_ENTRIES
from genbound.tasks.hf_text import (
    TextClassificationTask,
    activation_cache_info,
    clear_activation_cache,
    set_activation_cache_limits,
)


@pytest.fixture(autouse=True)
def empty_cache():
    clear_activation_cache()
    yield
    set_activation_cache_limits(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES)
    clear_activation_cache()


@pytest.fixture
def setup(tmp_path):
    base_dir = tiny_bert_with_tokenizer(tmp_path)
    data = random_texts(11, 0)
    task = TextClassificationTask(data, random_texts(5, 1), base_path=base_dir, batch_size=4)
    return task, task.build_model(None), data, base_dir


def hand_nbytes(batches) -> int:
    """hidden (B, T, H) float32, attention_mask (B, T) int64, labels (B,) int64."""
    total = 0
    for b in batches:
        hidden, mask = b.inputs["hidden"], b.inputs["attention_mask"]
        B, T, H = hidden.shape
        assert mask.shape == (B, T) and b.labels.shape == (B,)
        total += B * T * H * 4 + B * T * 8 + B * 8
    return total


def test_memoized_cleared_and_recomputed_identically(setup):
    task, model, data, base = setup
    first = task.cached_batches(model, data, 1, base)
    assert [len(b) for b in first] == [4, 4, 3]
    info = activation_cache_info()
    assert (info.entries, info.nbytes) == (1, hand_nbytes(first))
    assert (info.max_entries, info.max_bytes) == (MAX_ENTRIES, MAX_BYTES)
    assert task.cached_batches(model, data, 1, base) is first  # served from the cache
    clear_activation_cache()
    assert (activation_cache_info().entries, activation_cache_info().nbytes) == (0, 0)
    again = task.cached_batches(model, data, 1, base)
    assert again is not first
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.inputs["hidden"], b.inputs["hidden"])
        assert torch.equal(a.labels, b.labels)


def test_bounded_by_bytes(setup):
    task, model, data, base = setup
    one = hand_nbytes(task.cached_batches(model, data, 1, base))
    clear_activation_cache()
    set_activation_cache_limits(max_bytes=one)  # room for one entry
    layer1 = task.cached_batches(model, data, 1, base, also=(2,))  # two entries, one pass
    info = activation_cache_info()
    assert (info.entries, info.nbytes) == (1, one)  # the least recently used one was dropped
    assert task.cached_batches(model, data, 1, base) is layer1  # the one asked for is kept
    set_activation_cache_limits(max_bytes=one - 1)  # too small for any entry: dropped now
    assert (activation_cache_info().entries, activation_cache_info().nbytes) == (0, 0)
    fresh = task.cached_batches(model, data, 1, base)  # computed, returned, not kept
    assert fresh is not layer1 and activation_cache_info().entries == 0
    for a, b in zip(fresh, layer1, strict=True):
        assert torch.equal(a.inputs["hidden"], b.inputs["hidden"])


def test_bounded_by_count(setup):
    task, model, data, base = setup
    set_activation_cache_limits(max_entries=2)
    for start in (0, 1, 2):
        task.cached_batches(model, data, start, base)
    assert activation_cache_info().entries == 2
    layer2 = task.cached_batches(model, data, 2, base)
    assert task.cached_batches(model, data, 2, base) is layer2
    assert activation_cache_info().nbytes == 2 * hand_nbytes(layer2)  # layers 1 and 2 are alike


@pytest.mark.parametrize("bad", [{"max_entries": -1}, {"max_bytes": 1.5}, {"max_entries": True}])
def test_bad_limits_are_named(bad):
    (name,) = bad
    with pytest.raises(GenboundError, match=f"expected {name} to be a whole number"):
        set_activation_cache_limits(**bad)
