"""Labelled texts from CSV or JSON-lines files.

Labels are compared by value: ``1``, ``1.0``, ``"1"`` and ``"1e0"`` are one class, and
any label that is not a finite number is compared by its text. The classes are then:

* with ``label_names``: those names, in that order (each label must be one of them);
* else, when every label is a non-negative integer below :data:`MAX_CLASSES`: class
  indices ``0 .. largest`` (label ``i`` is class ``i``, whatever else the file holds);
* else: the distinct labels seen, numbers first in numeric order, then texts sorted, at
  most :data:`MAX_CLASSES` of them.

A row without a label or a text is an error naming its line; so is anything that is not
CSV or one JSON object per line.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from genbound.checkpoint.schema import json_type
from genbound.errors import GenboundError, input_error

#: The most classes a label column may define.
MAX_CLASSES = 10_000
#: The longest CSV field read, in characters (Python's csv module stops at 131,072).
MAX_FIELD_CHARS = 10_000_000

_FIELD_LIMIT_LOCK = threading.Lock()  # csv.field_size_limit is process-wide

Label = int | float | str


@dataclass(frozen=True, eq=False)
class LabelledTexts:
    """Texts with integer labels.

    Attributes:
        texts: the texts.
        labels: (N,) int64 class indices into ``label_names``.
        label_names: class names, index = label.
        source: where they came from (for reports).
    """

    texts: tuple[str, ...]
    labels: torch.Tensor
    label_names: tuple[str, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        idx = list(indices)
        return LabelledTexts(
            tuple(self.texts[i] for i in idx),
            self.labels[idx].clone(),
            self.label_names,
            f"{self.source} (subset of {len(idx)})",
        )


@dataclass(frozen=True)
class _Records:
    """A data file's rows: ``columns`` of the header (CSV) or first object (JSON lines), and
    per row its first line in the file and its values by column (absent: missing)."""

    columns: tuple[str, ...]
    rows: list[tuple[int, dict]]
    kind: str  # "csv" or "jsonl"

    def where(self, i: int) -> str:
        """Row ``i`` (from 0) in words: ``data row 3 (line 4)`` (CSV) or ``line 4``."""
        line = self.rows[i][0]
        return f"data row {i + 1} (line {line})" if self.kind == "csv" else f"line {line}"


def _open(path: Path, encoding: str) -> IO[str]:
    try:
        codecs.lookup(encoding)
        return open(path, encoding=encoding, newline="")
    except FileNotFoundError:
        raise input_error(path, "data file not found", cls=GenboundError) from None
    except IsADirectoryError:
        raise input_error(
            path,
            "not a file",
            expected="a .csv or .jsonl file",
            found="a folder",
            cls=GenboundError,
        ) from None
    except LookupError:
        raise input_error(
            path,
            "unknown text encoding",
            expected="an encoding Python knows (utf-8, latin-1, cp1252, utf-16, ...)",
            found=repr(encoding),
            hint="Pass the file's encoding with --encoding",
            cls=GenboundError,
        ) from None
    except OSError as exc:
        raise input_error(
            path,
            "cannot read the data file",
            expected="a readable file",
            found=exc.strerror or type(exc).__name__,
            cls=GenboundError,
        ) from None


def read_records(path: Path, encoding: str) -> _Records:
    """The rows of a .csv or .jsonl data file (a GenboundError naming the file otherwise)."""
    fh = _open(path, encoding)
    try:
        with fh:
            if path.suffix.lower() in (".jsonl", ".json"):
                return _jsonl_records(path, fh)
            return _csv_records(path, fh)
    except UnicodeDecodeError as exc:
        raise input_error(
            path,
            "cannot decode text",
            expected=f"{encoding} text",
            found=str(exc),
            hint="Pass the file's encoding (e.g. --encoding latin-1)",
            cls=GenboundError,
        ) from None


def _jsonl_records(path: Path, lines: Iterable[str]) -> _Records:
    rows: list[tuple[int, dict]] = []
    for lineno, line in enumerate(lines, 1):
        line = line.removeprefix("\ufeff") if lineno == 1 else line
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise input_error(
                path,
                "invalid JSON line",
                key=f"line {lineno}",
                expected="one JSON object per line",
                found=getattr(exc, "msg", None) or str(exc).split(":")[0][:200],
                cls=GenboundError,
            ) from None
        if not isinstance(obj, dict):
            raise input_error(
                path,
                "not a JSON object",
                key=f"line {lineno}",
                expected="one JSON object per line",
                found=f"a JSON {json_type(obj)}",
                cls=GenboundError,
            )
        rows.append((lineno, obj))
    return _Records(tuple(rows[0][1]) if rows else (), rows, "jsonl")


def _csv_records(path: Path, fh: IO[str]) -> _Records:
    reader = csv.reader(fh)
    with _FIELD_LIMIT_LOCK:
        old_limit = csv.field_size_limit(MAX_FIELD_CHARS)
        try:
            return _csv_rows(path, reader)
        except csv.Error as exc:
            too_long = "field larger than field limit" in str(exc)
            raise input_error(
                path,
                "a field too long" if too_long else "not valid CSV",
                key=f"line {reader.line_num}",
                expected=f"fields of at most {MAX_FIELD_CHARS:,} characters"
                if too_long
                else "comma-separated fields, quoted where they hold commas, quotes or newlines",
                found="a longer one" if too_long else str(exc),
                cls=GenboundError,
            ) from None
        finally:
            csv.field_size_limit(old_limit)


def _csv_rows(path: Path, reader) -> _Records:
    header = next((r for r in reader if r), None)
    if header is None:
        return _Records((), [], "csv")
    header[0] = header[0].removeprefix("\ufeff")
    rows: list[tuple[int, dict]] = []
    end = reader.line_num
    for fields in reader:
        start, end = end + 1, reader.line_num
        if not fields:
            continue  # a blank line
        if any(f.strip() for f in fields[len(header) :]):
            raise input_error(
                path,
                "more fields than the header has columns",
                key=f"line {start}",
                expected=f"at most {len(header)} fields",
                found=f"{len(fields)}",
                hint="Quote fields that contain commas",
                cls=GenboundError,
            )
        rows.append((start, dict(zip(header, fields, strict=False))))
    return _Records(tuple(header), rows, "csv")


def read_labelled(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    names_from: str = "label_names",
) -> LabelledTexts:
    """Read ``text_column`` and ``label_column`` of a ``.csv`` or ``.jsonl`` file.

    Labels map to class indices as the module docstring says: by value onto
    ``label_names`` when given (``names_from`` says where they came from, for errors), else
    as class indices when all are non-negative integers below :data:`MAX_CLASSES`, else
    onto the sorted distinct labels. Raises a GenboundError naming the file (and the line
    where one is at fault) for a missing file, column, text or label, an unknown label,
    more than :data:`MAX_CLASSES` classes, or text that is not CSV or JSON lines.
    """
    path = Path(path)
    records = read_records(path, encoding)
    check_columns(path, records, (text_column, label_column))
    texts = tuple(text_at(path, records, i, text_column) for i in range(len(records.rows)))
    keys = [_label(path, records, i, label_column) for i in range(len(records.rows))]
    if label_names is not None:
        names = tuple(str(n) for n in label_names)
        index = _name_index(names, names_from)
        unknown = sorted({k for k in keys if k not in index}, key=_order)
        if unknown:
            raise input_error(
                path,
                "unknown labels",
                key=label_column,
                expected=f"one of {preview(names)} ({names_from})",
                found=preview([_name(k) for k in unknown]),
                cls=GenboundError,
            )
        labels = [index[k] for k in keys]
    elif all(isinstance(k, int) and 0 <= k < MAX_CLASSES for k in keys):
        labels = keys
        names = tuple(str(i) for i in range(max(keys) + 1))
    else:
        distinct = sorted(set(keys), key=_order)
        if len(distinct) > MAX_CLASSES:
            raise input_error(
                path,
                "too many classes",
                key=label_column,
                expected=f"at most {MAX_CLASSES:,} distinct labels",
                found=f"{len(distinct):,}",
                hint="Check that --label-column names the column of class labels",
                cls=GenboundError,
            )
        index = {k: i for i, k in enumerate(distinct)}
        labels = [index[k] for k in keys]
        names = tuple(_name(k) for k in distinct)
    return LabelledTexts(texts, torch.tensor(labels, dtype=torch.int64), names, str(path))


def check_columns(path: Path, records: _Records, columns: Sequence[str]) -> None:
    """A GenboundError naming the file when it has no rows or lacks one of ``columns``."""
    if not records.rows:
        raise input_error(
            path,
            "no rows",
            expected="a header and at least one row"
            if records.kind == "csv"
            else "at least one JSON object",
            found="none",
            cls=GenboundError,
        )
    for col in columns:
        if col not in records.columns:
            raise input_error(
                path,
                "column missing",
                key=col,
                expected=f"a column named {col!r}",
                found=f"columns {sorted(records.columns)}",
                cls=GenboundError,
            )


def text_at(path: Path, records: _Records, i: int, column: str) -> str:
    """Row ``i``'s text in ``column`` (a GenboundError naming the file, row and column)."""
    value = records.rows[i][1].get(column)
    if isinstance(value, str):
        return value
    where = records.where(i)
    raise input_error(
        path,
        f"missing text in {where}" if value is None else f"text not a string in {where}",
        key=column,
        expected="a text in every row",
        found="none" if value is None else f"a JSON {json_type(value)}",
        cls=GenboundError,
    )


def _label(path: Path, records: _Records, i: int, column: str) -> Label:
    """The label of row ``i`` as the value it is compared by (see :func:`label_key`)."""
    value = records.rows[i][1].get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise input_error(
            path,
            f"missing label in {records.where(i)}",
            key=column,
            expected="a label in every row",
            found="an empty field" if value is not None else "none",
            cls=GenboundError,
        )
    if isinstance(value, dict | list):
        raise input_error(
            path,
            f"label not a string or number in {records.where(i)}",
            key=column,
            expected="a string or a number",
            found=f"a JSON {json_type(value)}",
            cls=GenboundError,
        )
    return label_key(value)


def label_key(value: object) -> Label:
    """What a label is compared by: a finite number by its value (``1``, ``1.0``, ``"1"``
    and ``"1e0"`` all give 1; integral values as ``int``), anything else by its text
    (JSON ``true`` as ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    text = str(value)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() else number


def _name_index(names: tuple[str, ...], names_from: str) -> dict[Label, int]:
    index: dict[Label, int] = {}
    for i, name in enumerate(names):
        key = label_key(name)
        if key in index:
            raise GenboundError(
                f"{names_from}: expected distinct class names; found {names[index[key]]!r} "
                f"and {name!r}, the same label."
            )
        index[key] = i
    return index


def _order(key: Label) -> tuple:
    """Numbers first, in numeric order, then texts in sorted order."""
    return (0, key, "") if not isinstance(key, str) else (1, 0, key)


def _name(key: Label) -> str:
    return key if isinstance(key, str) else repr(key)


def preview(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` names as a list, and how many more there are."""
    shown = list(names[:limit])
    return f"{shown}" + (f" and {len(names) - limit:,} more" if len(names) > limit else "")
