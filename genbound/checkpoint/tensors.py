"""Lazy, validated access to tensors on disk.

A :class:`TensorFile` opens a ``.safetensors`` file (only the header is read on open;
each tensor's bytes are memory-mapped when it is read, copied, and unmapped) or a torch ``.pt``/``.bin`` file (``weights_only=True``,
memory-mapped when the file is in torch's zip format). Tensors are read one at a
time on request. Every failure is a :class:`~genbound.errors.CheckpointError`
naming the file and key.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from genbound.checkpoint.schema import is_count, json_type, shown
from genbound.errors import input_error

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def bits_of(dtype: torch.dtype) -> int:
    """Bits per stored scalar of ``dtype`` (the q of the MI bound)."""
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


class TensorFile:
    """Read-only view of one tensor file; ``with TensorFile(p) as f: f["key"]``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise input_error(self.path, "file not found")
        if not self.path.is_file():
            raise input_error(
                self.path, "not a file", expected="a tensor file", found="a directory"
            )
        self._is_safetensors = False
        self._torch: Mapping[str, torch.Tensor] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        if self.path.suffix in SAFETENSORS_SUFFIXES:
            self._open_safetensors()
        elif self.path.suffix in TORCH_SUFFIXES:
            self._open_torch()
        else:
            raise input_error(
                self.path,
                "unknown tensor file type",
                expected="a .safetensors, .pt, .pth or .bin file",
                found=f"suffix {self.path.suffix!r}",
            )

    # -- opening ---------------------------------------------------------------
    def _open_safetensors(self) -> None:
        """Read and validate the header (see :func:`read_safetensors_header`); tensor bytes
        are read on demand."""
        header = read_safetensors_header(self.path)
        self._data_start = header.data_start
        self._meta = header.metadata
        for key, entry in header.tensors.items():
            self._offsets[key] = (entry.begin, entry.end)
            self._shapes[key] = entry.shape
            self._dtypes[key] = entry.dtype
        self._is_safetensors = True

    def _read_safetensors(self, key: str) -> torch.Tensor:
        """Read just this tensor's bytes into a fresh buffer (one copy; resident memory stays
        near one tensor however large the file, and nothing stays mapped)."""
        begin, end = self._offsets[key]
        dtype, shape = self._dtypes[key], self._shapes[key]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(end - begin)
        try:
            with open(self.path, "rb", buffering=0) as fh:
                fh.seek(self._data_start + begin)
                got = fh.readinto(buf)
        except OSError as exc:
            raise input_error(self.path, "cannot read file", key=key, found=str(exc)) from None
        if got != len(buf):
            raise input_error(
                self.path,
                "cannot read safetensors file (truncated or corrupt?)",
                key=key,
                expected=f"{len(buf)} bytes of tensor data",
                found=f"{got} bytes",
            )
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)

    def _open_torch(self) -> None:
        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # Legacy (non-zip) torch files cannot be memory-mapped.
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            found, hint = _torch_load_failure(exc)
            raise input_error(
                self.path,
                "cannot load torch file with weights_only=True",
                expected="a state dict of tensors saved by torch.save",
                found=found,
                hint=hint,
            ) from None
        if (
            isinstance(obj, Mapping)
            and "state_dict" in obj
            and isinstance(obj["state_dict"], Mapping)
        ):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise input_error(
                self.path,
                "not a state dict",
                expected="a mapping of names to tensors",
                found=type(obj).__name__,
            )
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        self._torch = tensors
        for key, t in tensors.items():
            self._shapes[key] = tuple(t.shape)
            self._dtypes[key] = t.dtype

    # -- access ----------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        self._require(key)
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        self._require(key)
        return self._dtypes[key]

    def metadata(self) -> dict[str, str]:
        return dict(self._meta) if self._is_safetensors else {}

    def __getitem__(self, key: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor), checked for NaN and Inf."""
        self._require(key)
        try:
            t = self._read_safetensors(key) if self._is_safetensors else self._torch[key]
        except Exception as exc:
            raise input_error(self.path, "cannot read tensor", key=key, found=str(exc)) from None
        check_finite(t, self.path, key)
        return t

    def _require(self, key: str) -> None:
        if key not in self._shapes:
            raise input_error(
                self.path,
                "tensor missing",
                key=key,
                expected="the key to be present",
                found=f"{len(self._shapes)} other keys, e.g. {_sample(self._shapes)}",
            )

    def close(self) -> None:
        self._torch = None

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorFile({str(self.path)!r}, {len(self)} tensors)"


#: Longest header accepted; the reference implementation refuses longer ones as corrupt.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: its bytes are ``[begin, end)`` of the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: ``data_start`` is the file offset of byte 0 of the
    data section; ``tensors`` tile that section exactly."""

    data_start: int
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and check a safetensors header as the format requires; no tensor data is read.

    The file is an 8-byte little-endian length n (at most :data:`MAX_HEADER_BYTES`), n bytes
    of UTF-8 JSON holding an object, then the data section (file size - 8 - n bytes). The
    object's ``__metadata__``, if present and not null, maps strings to strings; every other
    key names a tensor ``{"dtype", "shape", "data_offsets": [begin, end]}`` with a dtype
    genbound reads, a shape of non-negative integers, 0 <= begin <= end and
    end - begin = dtype size x product(shape). Sorted by offsets, the tensors' byte ranges
    tile the data section: the first begins at 0, each begins where the previous ends and
    the last ends at the end of the file. Any violation is a CheckpointError naming the
    file, the tensor, what was expected and what was found.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise input_error(
                    path,
                    "safetensors file too short (truncated or corrupt?)",
                    expected="an 8-byte header length followed by the header",
                    found=f"{size} bytes",
                )
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise input_error(
                    path,
                    "safetensors header length too large (corrupt?)",
                    expected=f"at most {MAX_HEADER_BYTES:,} bytes",
                    found=f"{n:,} bytes",
                )
            if n > size - 8:
                raise input_error(
                    path,
                    "safetensors header does not fit in the file (truncated or corrupt?)",
                    expected=f"a header of at most {size - 8} bytes (the file has {size})",
                    found=f"a header length of {n}",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise input_error(path, "cannot read file", found=str(exc)) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise input_error(
            path,
            "safetensors header is not JSON (truncated or corrupt?)",
            expected=f"{n} bytes of UTF-8 JSON",
            found=str(exc).split(":")[0],
        ) from None
    if not isinstance(header, dict):
        raise input_error(
            path,
            "safetensors header is not a JSON object",
            expected="an object of tensor entries",
            found=f"a JSON {json_type(header)}: {shown(header)}",
        )
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise input_error(
            path,
            "invalid safetensors metadata",
            key="__metadata__",
            expected="an object of strings to strings",
            found=shown(metadata),
        )
    tensors = {name: _tensor_entry(path, name, info) for name, info in header.items()}
    _check_tiling(path, tensors, data_size=size - 8 - n)
    return SafetensorsHeader(data_start=8 + n, metadata=metadata, tensors=tensors)


def _tensor_entry(path: Path, name: str, info: object) -> TensorEntry:
    """Check one header entry on its own (fields, types, byte count)."""
    fields = ("dtype", "shape", "data_offsets")
    if not (isinstance(info, dict) and all(f in info for f in fields)):
        raise input_error(
            path,
            "invalid safetensors tensor entry",
            key=name,
            expected="an object with dtype, shape and data_offsets",
            found=shown(info),
        )
    dtype_name, shape, offsets = (info[f] for f in fields)
    if not (isinstance(dtype_name, str) and dtype_name in _SAFETENSORS_DTYPES):
        problem = (
            f"unsupported safetensors dtype {dtype_name}"
            if isinstance(dtype_name, str)
            else "invalid safetensors dtype"
        )
        raise input_error(
            path,
            problem,
            key=name,
            expected="one of " + ", ".join(_SAFETENSORS_DTYPES),
            found=shown(dtype_name),
        )
    if not (isinstance(shape, list) and all(is_count(d) for d in shape)):
        raise input_error(
            path,
            "invalid tensor shape",
            key=name,
            expected="a list of non-negative integers",
            found=shown(shape),
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(is_count(x) for x in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise input_error(
            path,
            "invalid data_offsets",
            key=name,
            expected="[begin, end], integers with 0 <= begin <= end",
            found=shown(offsets),
        )
    dtype = _SAFETENSORS_DTYPES[dtype_name]
    begin, end = offsets
    nbytes = dtype.itemsize * math.prod(shape)
    if end - begin != nbytes:
        raise input_error(
            path,
            "tensor byte count does not match its shape and dtype",
            key=name,
            expected=f"{nbytes} bytes ({dtype_name}, shape {shape})",
            found=f"data_offsets [{begin}, {end}]: {end - begin} bytes",
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tiling(path: Path, tensors: Mapping[str, TensorEntry], data_size: int) -> None:
    """The tensors' byte ranges, sorted by offsets, must cover ``[0, data_size)`` exactly once."""
    start, previous = 0, None
    for name, e in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin != start:
            after = f"where {previous!r} ends" if previous else "the start of the data section"
            raise input_error(
                path,
                "tensors overlap" if e.begin < start else "unused bytes between tensors",
                key=name,
                expected=f"data_offsets beginning at {start} ({after})",
                found=f"data_offsets [{e.begin}, {e.end}]",
            )
        start, previous = e.end, name
    if start > data_size:
        raise input_error(
            path,
            "tensor data runs past the end of the file (truncated?)",
            key=previous,
            expected=f"tensors within the {data_size}-byte data section",
            found=f"data up to byte {start}",
        )
    if start < data_size:
        raise input_error(
            path,
            "bytes after the last tensor (corrupt?)",
            expected=f"tensors that fill the {data_size}-byte data section",
            found=f"{data_size - start} bytes after the last tensor's end at byte {start}",
        )


_NON_TENSOR_HINT = (
    "The file holds objects other than tensors (a pickled class or function), which genbound "
    "never unpickles; save a plain state dict (torch.save(model.state_dict(), path)) or "
    "convert the weights to safetensors"
)


def _torch_load_failure(exc: Exception, limit: int = 300) -> tuple[str, str | None]:
    """Why ``torch.load(weights_only=True)`` refused a file: the first sentence of the
    unpickler's own reason (at most ``limit`` characters, cut at a word), and a hint when
    the file holds non-tensor objects."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    line = next((ln.strip() for ln in detail.splitlines() if ln.strip()), type(exc).__name__)
    sentence = re.split(r"(?<=[.!?])\s", line, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    hint = _NON_TENSOR_HINT if "Unsupported global" in detail else None
    return sentence, hint


def check_finite(t: torch.Tensor, path: str | Path, key: str) -> None:
    """Raise a CheckpointError when a floating tensor holds NaN or Inf."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise input_error(
            path,
            "non-finite weights",
            key=key,
            expected="finite values",
            found=f"{n_nan} NaN and {n_inf} Inf among {t.numel()} values",
        )


def read_json(path: Path) -> dict:
    """Read a JSON object, with a clear error for a missing or malformed file."""
    if not path.exists():
        raise input_error(path, "file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise input_error(path, "cannot read file", found=str(exc)) from None
    except json.JSONDecodeError as exc:
        raise input_error(
            path, "invalid JSON", expected="a JSON object", found=f"{exc.msg} at line {exc.lineno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
        raise input_error(
            path, "invalid JSON", expected="a JSON object", found=_first_sentence(exc)
        ) from None
    if not isinstance(obj, dict):
        raise input_error(path, "invalid JSON", expected="a JSON object", found=type(obj).__name__)
    return obj


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _sample(keys: Mapping[str, object] | list[str], n: int = 3) -> str:
    ks = list(keys)[:n]
    return ", ".join(repr(k) for k in ks) if ks else "none"


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().split(". ")[0].split(":")[0]
    return text[:200] or type(exc).__name__
