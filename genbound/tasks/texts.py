"""Labelled texts from CSV or JSON-lines files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from genbound.errors import GenboundError, input_error


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


def _rows(path: Path, encoding: str) -> list[dict]:
    try:
        if path.suffix in (".jsonl", ".json"):
            rows = []
            with open(path, encoding=encoding) as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise input_error(
                                path,
                                "invalid JSON line",
                                key=f"line {lineno}",
                                expected="one JSON object per line",
                                found=exc.msg,
                                cls=GenboundError,
                            ) from None
            return rows
        with open(path, encoding=encoding, newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise input_error(path, "data file not found", cls=GenboundError) from None
    except UnicodeDecodeError as exc:
        raise input_error(
            path,
            "cannot decode text",
            expected=f"{encoding} text",
            found=str(exc),
            hint="Pass the file's encoding (e.g. --encoding latin-1)",
            cls=GenboundError,
        ) from None


def read_labelled(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> LabelledTexts:
    """Read ``text_column`` and ``label_column`` of a ``.csv`` or ``.jsonl`` file.

    Labels may be integers (used as class indices) or strings (mapped to indices in the
    order of ``label_names``, or sorted order when not given).
    """
    path = Path(path)
    rows = _rows(path, encoding)
    if not rows:
        raise input_error(
            path,
            "no rows",
            expected="a header and at least one row",
            found="none",
            cls=GenboundError,
        )
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise input_error(
                path,
                "column missing",
                key=col,
                expected=f"a column named {col!r}",
                found=f"columns {sorted(rows[0])}",
                cls=GenboundError,
            )
    texts = tuple(str(r[text_column]) for r in rows)
    raw = [r[label_column] for r in rows]
    as_int = [_as_int(x) for x in raw]
    if all(v is not None for v in as_int) and label_names is None:
        labels = as_int
        names = tuple(str(i) for i in range(max(labels) + 1))
    else:
        names = (
            tuple(label_names) if label_names is not None else tuple(sorted({str(x) for x in raw}))
        )
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(x) for x in raw} - set(index))
        if unknown:
            raise input_error(
                path,
                "unknown labels",
                key=label_column,
                expected=f"one of {list(names)}",
                found=f"{unknown[:5]}",
                cls=GenboundError,
            )
        labels = [index[str(x)] for x in raw]
    if min(labels) < 0:
        raise input_error(
            path,
            "negative label",
            key=label_column,
            expected="labels >= 0",
            found=str(min(labels)),
            cls=GenboundError,
        )
    return LabelledTexts(texts, torch.tensor(labels, dtype=torch.int64), names, str(path))


def _as_int(x: object) -> int | None:
    try:
        f = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(f) if f == int(f) else None
