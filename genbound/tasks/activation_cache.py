"""The process-wide cache of hidden states that cached-activation objectives run on.

:meth:`TextClassificationTask.cached_batches <genbound.tasks.hf_text.TextClassificationTask.cached_batches>`
computes the hidden states entering an encoder layer once per (base model, texts, layer,
max_length, batch_size, device) and keeps them here, so every checkpoint of a sweep on the
same data and base shares one pass. The cache is bounded twice: at most
:data:`MAX_ENTRIES` entries and :data:`MAX_BYTES` bytes of tensors (least recently used
entries are dropped first; an entry larger than the byte bound alone is not kept). Bytes
are counted per entry: a tensor two entries share (the attention mask) counts in both.

:func:`clear_activation_cache` empties it (the memory is freed once no objective still
holds the batches); :func:`set_activation_cache_limits` changes the bounds and
:func:`activation_cache_info` says what is held. All three are safe to call from threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from genbound.errors import GenboundError
from genbound.tasks.objective import Batch

#: Default bound on the number of entries (one per data set and layer).
MAX_ENTRIES = 8
#: Default bound on the bytes of tensors held (4 GiB).
MAX_BYTES = 4 * 2**30


@dataclass(frozen=True)
class ActivationCacheInfo:
    """What the cache holds: ``entries`` and ``nbytes`` (bytes of tensors, per entry), and
    its bounds ``max_entries`` and ``max_bytes``."""

    entries: int
    nbytes: int
    max_entries: int
    max_bytes: int


def batches_nbytes(batches: Sequence[Batch]) -> int:
    """Bytes of every distinct tensor in ``batches`` (inputs and labels)."""
    seen: dict[int, int] = {}
    for b in batches:
        inputs = b.inputs
        if isinstance(inputs, dict):
            inputs = tuple(inputs.values())
        elif not isinstance(inputs, tuple | list):
            inputs = (inputs,)
        for t in (*inputs, b.labels):
            if isinstance(t, torch.Tensor):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


class _Cache:
    """A least-recently-used map bounded by entry count and bytes; thread-safe."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.items: OrderedDict[Hashable, tuple[object, list[Batch], int]] = OrderedDict()
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, key: Hashable, check: object) -> list[Batch] | None:
        """The batches stored under ``key`` with the same ``check`` value, else None."""
        with self.lock:
            hit = self.items.get(key)
            if hit is None or hit[0] != check:
                return None
            self.items.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, check: object, batches: list[Batch]) -> None:
        size = batches_nbytes(batches)
        with self.lock:
            self._drop(key)
            if size <= self.max_bytes and self.max_entries > 0:
                self.items[key] = (check, batches, size)
                self.nbytes += size
            self._evict()

    def _drop(self, key: Hashable) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.nbytes -= old[2]

    def _evict(self) -> None:
        while self.items and (len(self.items) > self.max_entries or self.nbytes > self.max_bytes):
            self.nbytes -= self.items.popitem(last=False)[1][2]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.nbytes = 0

    def limit(self, max_entries: int | None, max_bytes: int | None) -> None:
        with self.lock:
            if max_entries is not None:
                self.max_entries = max_entries
            if max_bytes is not None:
                self.max_bytes = max_bytes
            self._evict()

    def info(self) -> ActivationCacheInfo:
        with self.lock:
            return ActivationCacheInfo(
                len(self.items), self.nbytes, self.max_entries, self.max_bytes
            )


CACHE = _Cache(MAX_ENTRIES, MAX_BYTES)


def clear_activation_cache() -> None:
    """Drop every cached hidden state of this process (e.g. between sweeps on other data,
    or to free memory); later objectives compute them again, with the same values."""
    CACHE.clear()


def set_activation_cache_limits(
    *, max_entries: int | None = None, max_bytes: int | None = None
) -> ActivationCacheInfo:
    """Change the cache's bounds (None keeps one); entries beyond them are dropped now.

    Raises a GenboundError unless each given bound is a whole number >= 0 (0 turns
    caching off). Returns what the cache holds afterwards.
    """
    for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise GenboundError(
                f"set_activation_cache_limits: expected {name} to be a whole number >= 0 "
                f"or None; found {value!r}."
            )
    CACHE.limit(max_entries, max_bytes)
    return CACHE.info()


def activation_cache_info() -> ActivationCacheInfo:
    """How many entries and bytes the cache holds now, and its bounds."""
    return CACHE.info()
