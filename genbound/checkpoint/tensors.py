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
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

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
        """Parse the header (8-byte length, then JSON); tensor bytes are mapped on demand."""
        size = self.path.stat().st_size

        def corrupt(found: str) -> Exception:
            return input_error(
                self.path,
                "cannot read safetensors file (truncated or corrupt?)",
                expected="a complete safetensors file whose header covers its data",
                found=f"{size} bytes; {found}",
            )

        try:
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise corrupt("no header length")
                n = int.from_bytes(head, "little")
                if n > size - 8:
                    raise corrupt(f"a header of {n} bytes that does not fit")
                header = json.loads(fh.read(n))
        except OSError as exc:
            raise input_error(self.path, "cannot read file", found=str(exc)) from None
        except (ValueError, UnicodeDecodeError):
            raise corrupt("a header that is not JSON") from None
        self._data_start = 8 + n
        self._meta = header.pop("__metadata__", None) or {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for key, info in header.items():
            try:
                begin, end = (int(x) for x in info["data_offsets"])
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
            except (KeyError, TypeError, ValueError):
                raise corrupt(f"an unreadable header entry for {key!r}") from None
            if self._data_start + end > size:
                raise corrupt(f"tensor {key!r} ends at byte {self._data_start + end}")
            self._offsets[key] = (begin, end)
            self._shapes[key] = shape
            self._dtypes[key] = dtype
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
            raise input_error(
                self.path,
                "cannot load torch file with weights_only=True",
                expected="a state dict of tensors saved by torch.save",
                found=str(exc).splitlines()[0][:300],
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
    if not isinstance(obj, dict):
        raise input_error(path, "invalid JSON", expected="a JSON object", found=type(obj).__name__)
    return obj


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def _sample(keys: Mapping[str, object] | list[str], n: int = 3) -> str:
    ks = list(keys)[:n]
    return ", ".join(repr(k) for k in ks) if ks else "none"
