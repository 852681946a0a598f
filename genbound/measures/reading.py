"""Reading numbers back from a ``report.json`` document (what sweeps rank)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from genbound.jsonio import number

__all__ = ["get", "integer", "mean_updates", "number", "sum_updates"]


def integer(x: Any) -> int | None:
    """A count as an int (a float that holds an integer, as JSON may give it, too)."""
    v = number(x)
    return int(v) if v is not None and math.isfinite(v) and v == int(v) else None


def get(doc: Mapping, *path: str) -> Any:
    """``doc[path[0]][path[1]]...``, or None where a key is missing or null."""
    for key in path:
        if not isinstance(doc, Mapping) or key not in doc or doc[key] is None:
            return None
        doc = doc[key]
    return doc


def update_values(doc: Mapping, key: str) -> list[float]:
    """``key`` of every entry of the report's ``updates`` that has a number there."""
    updates = doc.get("updates") or []
    vals = [number(u.get(key)) for u in updates if isinstance(u, Mapping)]
    return [v for v in vals if v is not None]


def sum_updates(doc: Mapping, key: str) -> float | None:
    vals = update_values(doc, key)
    return float(sum(vals)) if vals else None


def mean_updates(doc: Mapping, key: str) -> float | None:
    vals = update_values(doc, key)
    return float(np.mean(vals)) if vals else None
