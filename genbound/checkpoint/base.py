"""The base (pretrained) model's weights, read lazily one tensor at a time.

A base model is a Hugging Face model folder (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``) or a single tensor
file. Only headers are read when it is opened; :meth:`BaseModel.tensor` reads one
tensor from the memory-mapped file when asked, so the whole model is never in
memory at once.

Adapters name modules by their path inside the model they were trained on
(``bert.encoder.layer.0.attention.self.query``) while the base folder may have
been saved from a differently wrapped model (``encoder.layer.0...``).
:meth:`BaseModel.resolve` maps one to the other.

Every checkpoint of a sweep opens the same base model, so the opened files (their
validated headers, or a torch file's mapped tensors) and the content fingerprint are
memoized per process (:func:`clear_base_cache` empties the memo). An entry is keyed on
the file's resolved path, device, inode, size and modification and change times: a file
that was rewritten, replaced or touched since is opened again, never served from the memo.
A file changed less than :data:`FRESH_SECONDS` ago is not memoized at all (a rewrite within
one tick of the filesystem's clock could keep its times).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from genbound.checkpoint.tensors import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, TensorFile
from genbound.errors import input_error

_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

#: Opened tensor files kept per process (a sharded base counts each shard).
MAX_OPEN_FILES = 64

#: A file changed this recently (seconds) is not memoized: file times advance in ticks of
#: the filesystem's clock (a few milliseconds; up to 2 s on some filesystems), and a
#: rewrite within the same tick would keep them.
FRESH_SECONDS = 2.0

#: What identifies one state of a file: (resolved path, device, inode, size, mtime, ctime).
FileKey = tuple[str, int, int, int, int, int]

_lock = threading.Lock()
_opened: OrderedDict[FileKey, TensorFile] = OrderedDict()
_fingerprints: dict[tuple[FileKey, ...], str] = {}


def file_key(path: Path) -> FileKey:
    """The memo key of ``path`` as it is now (nanosecond times: a rewrite changes it)."""
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(key: FileKey) -> bool:
    """Whether the file of ``key`` was last changed :data:`FRESH_SECONDS` ago or earlier."""
    return time.time_ns() - max(key[4], key[5]) > FRESH_SECONDS * 1e9


def open_tensor_file(path: Path) -> TensorFile:
    """The opened tensor file at ``path``: the memoized one while the file is unchanged
    (same :func:`file_key`), else a fresh one (memoized unless just changed)."""
    key = file_key(path) if path.is_file() else None
    if key is None or not _settled(key):
        return TensorFile(path)  # not a file (TensorFile says what is wrong), or just written
    with _lock:
        hit = _opened.get(key)
        if hit is not None:
            _opened.move_to_end(key)
            return hit
    tf = TensorFile(path)
    with _lock:
        _opened[key] = tf
        while len(_opened) > MAX_OPEN_FILES:
            _opened.popitem(last=False)
    return tf


def clear_base_cache() -> None:
    """Forget every memoized base-model file and fingerprint of this process."""
    with _lock:
        _opened.clear()
        _fingerprints.clear()


class BaseModel:
    """Lazy view of a base model's tensors.

    Args:
        path: a model folder or a single ``.safetensors``/``.pt``/``.bin`` file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._files: dict[Path, TensorFile] = {}
        self._where: dict[str, Path] = {}
        for file in self._tensor_files():
            tf = open_tensor_file(file)
            self._files[file] = tf
            for key in tf.keys():
                self._where.setdefault(key, file)
        self._resolved: dict[str, str | None] = {}

    def _tensor_files(self) -> list[Path]:
        p = self.path
        if not p.exists():
            raise input_error(p, "base model not found", expected="a model folder or tensor file")
        if p.is_file():
            return [p]
        for name in _INDEX_FILES:
            index = p / name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (ValueError, KeyError) as exc:
                    raise input_error(
                        index,
                        "invalid shard index",
                        expected="a JSON object with 'weight_map'",
                        found=str(exc),
                    ) from None
                return [p / f for f in dict.fromkeys(weight_map.values())]
        for name in _FOLDER_FILES:
            if (p / name).exists():
                return [p / name]
        found = sorted(
            f.name for f in p.iterdir() if f.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
        )
        if len(found) == 1:
            return [p / found[0]]
        raise input_error(
            p,
            "no model weights in folder",
            expected="model.safetensors, a shard index, or pytorch_model.bin",
            found=", ".join(found) if found else "no tensor files",
        )

    # -- names -----------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def resolve(self, name: str) -> str | None:
        """The base key for tensor ``name`` (as named in an adapter), or None.

        Tries the exact name, then the name with leading module components removed
        (``bert.encoder.x`` -> ``encoder.x``), then a unique base key that ends with
        ``"." + name`` (the base was saved from a wrapping model).
        """
        if name in self._resolved:
            return self._resolved[name]
        found: str | None = None
        if name in self._where:
            found = name
        else:
            parts = name.split(".")
            for i in range(1, len(parts) - 1):
                cand = ".".join(parts[i:])
                if cand in self._where:
                    found = cand
                    break
            if found is None:
                ends = [k for k in self._where if k.endswith("." + name)]
                if len(ends) == 1:
                    found = ends[0]
        self._resolved[name] = found
        return found

    def _key(self, name: str) -> str:
        key = self.resolve(name)
        if key is None:
            close = [k for k in self._where if k.split(".")[-2:] == name.split(".")[-2:]][:3]
            raise input_error(
                self.path,
                "tensor not in base model",
                key=name,
                expected="a tensor of that name (or a suffix of it)",
                found=f"no match; similar keys: {', '.join(close) or 'none'}",
                hint="Check that --base points to the model the adapter was trained on",
            )
        return key

    # -- tensors ---------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        key = self._key(name)
        return self._files[self._where[key]].shape(key)

    def dtype(self, name: str) -> torch.dtype:
        key = self._key(name)
        return self._files[self._where[key]].dtype(key)

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor from disk (checked finite): a fresh tensor the caller owns."""
        key = self._key(name)
        file = self._where[key]
        t = self._files[file][key]
        # a torch file's tensors are shared by every user of the memoized file
        return t.clone() if file.suffix in TORCH_SUFFIXES else t

    @property
    def fingerprint(self) -> str:
        """A content hash identifying this base model (sha256 over each file's bytes).

        Used to key on-disk caches (for example the SVD of each W0) across every
        checkpoint of the same base model. Files are hashed in 8 MiB blocks, once per
        process while they are unchanged.
        """
        files = sorted(self._files)
        key = tuple(file_key(f) for f in files)
        with _lock:
            hit = _fingerprints.get(key)
        if hit is not None:
            return hit
        h = hashlib.sha256()
        for file in files:
            h.update(file.name.encode())
            with open(file, "rb") as fh:
                while block := fh.read(8 << 20):
                    h.update(block)
        if all(map(_settled, key)):
            with _lock:
                _fingerprints[key] = h.hexdigest()
        return h.hexdigest()

    def close(self) -> None:
        """Nothing to release: the opened files belong to the process-wide memo, which
        keeps them for the next checkpoint of this base (see :func:`clear_base_cache`)."""

    def __repr__(self) -> str:
        return f"BaseModel({str(self.path)!r}, {len(self._where)} tensors)"
