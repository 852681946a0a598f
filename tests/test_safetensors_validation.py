"""genbound's safetensors reader checks every header field as the format requires.

Each malformed file is written by hand (8-byte length, JSON header, data bytes) and must give
a named CheckpointError; where the reference implementation (the ``safetensors`` package)
rejects the same file, that is checked too, so genbound accepts no less strict a format.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_peft, tiny_bert
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genbound import load_checkpoint
from genbound.checkpoint.tensors import MAX_HEADER_BYTES, TensorFile, _torch_load_failure
from genbound.cli.main import main
from genbound.errors import CheckpointError


def write_raw(path, header, data: bytes = b"", *, length: int | None = None) -> None:
    """A safetensors file from parts: ``header`` is JSON-encoded unless given as bytes."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + blob + data)


def f32(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def reference_rejects(path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


# (case id, header, data bytes, header length or None, words of the problem, key or None,
#  whether the reference implementation rejects the file too)
BAD = [
    ("negative offset", {"w": f32([2], -8, 0)}, bytes(8), None, "invalid data_offsets", "w", True),
    ("begin after end", {"w": f32([0], 8, 0)}, bytes(8), None, "invalid data_offsets", "w", True),
    (
        "three offsets",
        {"w": f32([2], 0, 8) | {"data_offsets": [0, 4, 8]}},
        bytes(8),
        None,
        "invalid data_offsets",
        "w",
        True,
    ),
    ("float offset", {"w": f32([2], 0, 8.0)}, bytes(8), None, "invalid data_offsets", "w", True),
    (
        "overlap",
        {"a": f32([2], 0, 8), "b": f32([2], 4, 12)},
        bytes(12),
        None,
        "tensors overlap",
        "b",
        True,
    ),
    (
        "gap",
        {"a": f32([2], 0, 8), "b": f32([2], 12, 20)},
        bytes(20),
        None,
        "unused bytes between tensors",
        "b",
        True,
    ),
    (
        "not from 0",
        {"a": f32([2], 4, 12)},
        bytes(12),
        None,
        "unused bytes between tensors",
        "a",
        True,
    ),
    (
        "trailing bytes",
        {"a": f32([2], 0, 8)},
        bytes(12),
        None,
        "bytes after the last tensor",
        None,
        True,
    ),
    (
        "data past the end",
        {"a": f32([2], 0, 8)},
        bytes(4),
        None,
        "runs past the end of the file",
        "a",
        True,
    ),
    (
        "count vs shape",
        {"a": f32([3], 0, 8)},
        bytes(8),
        None,
        "byte count does not match its shape and dtype",
        "a",
        True,
    ),
    (
        "count vs dtype",
        {"a": f32([2], 0, 8, dtype="F64")},
        bytes(8),
        None,
        "byte count does not match its shape and dtype",
        "a",
        True,
    ),
    ("negative shape", {"a": f32([-2], 0, 8)}, bytes(8), None, "invalid tensor shape", "a", True),
    ("float shape", {"a": f32([2.0], 0, 8)}, bytes(8), None, "invalid tensor shape", "a", True),
    ("bool shape", {"a": f32([True, 2], 0, 8)}, bytes(8), None, "invalid tensor shape", "a", True),
    ("shape not a list", {"a": f32(2, 0, 8)}, bytes(8), None, "invalid tensor shape", "a", True),
    ("list header", [1, 2], b"", None, "not a JSON object", None, True),
    ("number header", 42, b"", None, "not a JSON object", None, True),
    (
        "metadata list",
        {"__metadata__": ["x"], "a": f32([2], 0, 8)},
        bytes(8),
        None,
        "invalid safetensors metadata",
        "__metadata__",
        True,
    ),
    (
        "metadata values",
        {"__metadata__": {"k": 1}, "a": f32([2], 0, 8)},
        bytes(8),
        None,
        "invalid safetensors metadata",
        "__metadata__",
        True,
    ),
    (
        "entry not an object",
        {"a": [0, 8]},
        bytes(8),
        None,
        "invalid safetensors tensor entry",
        "a",
        True,
    ),
    (
        "missing field",
        {"a": {"dtype": "F32", "shape": [2]}},
        bytes(8),
        None,
        "invalid safetensors tensor entry",
        "a",
        True,
    ),
    (
        "dtype not a string",
        {"a": f32([2], 0, 8, dtype=4)},
        bytes(8),
        None,
        "invalid safetensors dtype",
        "a",
        True,
    ),
    (
        "unknown dtype",
        {"a": f32([2], 0, 8, dtype="Q7")},
        bytes(8),
        None,
        "unsupported safetensors dtype Q7",
        "a",
        True,
    ),
    # formats the reference reads but genbound does not: named as unsupported dtypes
    (
        "float8",
        {"a": f32([8], 0, 8, dtype="F8_E4M3")},
        bytes(8),
        None,
        "unsupported safetensors dtype F8_E4M3",
        "a",
        False,
    ),
    (
        "complex",
        {"a": f32([1], 0, 8, dtype="C64")},
        bytes(8),
        None,
        "unsupported safetensors dtype C64",
        "a",
        False,
    ),
    (
        "header length too large",
        b"{}",
        b"",
        MAX_HEADER_BYTES + 1,
        "header length too large",
        None,
        True,
    ),
    ("header past the file", b"{}", b"", 1000, "header does not fit in the file", None, True),
    ("header not JSON", b"{not json", b"", None, "header is not JSON", None, True),
    ("header not UTF-8", b'{"\xff": 1}', b"", None, "header is not JSON", None, True),
]


@pytest.mark.parametrize(
    "header, data, length, problem, key, ref",
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_malformed_header_is_a_named_error(tmp_path, header, data, length, problem, key, ref):
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, data, length=length)
    with pytest.raises(CheckpointError) as err:
        TensorFile(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert problem in msg, msg
    if key is not None:
        assert f"[key {key!r}]" in msg, msg
    assert "expected" in msg and "found" in msg, msg
    assert reference_rejects(path) is ref


def test_short_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x02\x00\x00")
    with pytest.raises(CheckpointError, match="too short"):
        TensorFile(path)


def test_valid_files_read_as_the_reference_reads_them(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f64": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "f32": torch.randn(5, generator=g),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "i64": torch.randint(-9, 9, (4,), generator=g),
        "i32": torch.randint(-9, 9, (2, 2), generator=g).int(),
        "i16": torch.randint(-9, 9, (3,), generator=g).short(),
        "i8": torch.randint(-9, 9, (3,), generator=g).to(torch.int8),
        "u8": torch.randint(0, 255, (5,), generator=g).to(torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "ok.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    ref = load_file(str(path))
    with TensorFile(path) as tf:
        assert sorted(tf.keys()) == sorted(ref)
        assert tf.metadata() == {"format": "pt", "note": "x"}
        for k, want in ref.items():
            got = tf[k]
            assert got.dtype == want.dtype and got.shape == want.shape, k
            assert torch.equal(got, want), k
            assert tf.shape(k) == tuple(want.shape) and tf.dtype(k) == want.dtype


def test_entries_in_any_order_and_null_metadata(tmp_path):
    """Header entries may be listed in any order; zero-byte tensors may sit at any boundary."""
    path = tmp_path / "ok.safetensors"
    data = torch.arange(2, dtype=torch.float32).numpy().tobytes()
    data += torch.arange(3, dtype=torch.float64).numpy().tobytes()
    header = {
        "__metadata__": None,
        "b": f32([3], 8, 32, dtype="F64"),
        "empty_mid": f32([0], 8, 8),
        "a": f32([2], 0, 8),
        "empty_end": f32([2, 0], 32, 32),
    }
    write_raw(path, header, data)
    assert not reference_rejects(path)
    with TensorFile(path) as tf:
        assert torch.equal(tf["a"], torch.arange(2, dtype=torch.float32))
        assert torch.equal(tf["b"], torch.arange(3, dtype=torch.float64))
        assert tf["empty_end"].shape == (2, 0) and tf.metadata() == {}


class NotATensor:
    """A pickled object a weights-only load refuses."""


def test_weights_only_message_is_a_whole_sentence(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError) as err:
        TensorFile(path)
    msg = str(err.value)
    assert "cannot load torch file with weights_only=True" in msg
    assert "NotATensor was not an allowed global by default." in msg
    assert "objects other than tensors" in msg
    assert "weights_only` set to `False`" not in msg  # never advise the unsafe load
    long = RuntimeError("WeightsUnpickler error: " + "word " * 200 + "end.\nmore")
    found, hint = _torch_load_failure(long)
    assert len(found) <= 304 and found.endswith("word ...") and hint is None


def _rewrite_header(path, change) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    change(header)
    write_raw(path, header, raw[8 + n :])


def test_negative_offset_in_a_peft_adapter_fails_the_cli(tmp_path, capsys):
    """An adapter whose header points a lora factor before the data section (into the
    header's own bytes) is refused with exit 2, not read as weights."""
    _, ad, _ = build_peft(tmp_path, tiny_bert, dict(r=4, lora_alpha=8, target_modules=["query"]))
    path = ad / "adapter_model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    first = min(json.loads(raw[8 : 8 + n]).items(), key=lambda kv: kv[1].get("data_offsets", [1e9]))
    name = first[0]

    def shift(header):
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin - 64, end - 64]

    _rewrite_header(path, shift)
    with pytest.raises(CheckpointError, match="invalid data_offsets"):
        load_checkpoint(ad)
    capsys.readouterr()
    assert main(["inspect", str(ad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(path) in err and name in err and "invalid data_offsets" in err
