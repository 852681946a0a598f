"""Turn result dataclasses into JSON-ready values, and write JSON documents.

One convention for every JSON file genbound writes (reports, sweeps): JSON has no
infinities or NaN, so non-finite floats are written as the strings ``"inf"``, ``"-inf"``
and ``"nan"`` (readers: :func:`genbound.compare` turns them back into floats), integers
stay integers, numpy and torch values become lists and numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import torch


def jsonable(obj: Any, *, skip: frozenset[str] = frozenset()) -> Any:
    """Recursively convert dataclasses, numpy and torch values; non-finite floats become
    the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (JSON has no such numbers)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: jsonable(getattr(obj, f.name), skip=skip)
            for f in dataclasses.fields(obj)
            if f.name not in skip
        }
    if isinstance(obj, dict):
        return {str(k): jsonable(v, skip=skip) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, skip=skip) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().numpy(), skip=skip)
    if isinstance(obj, np.ndarray):
        return [jsonable(v, skip=skip) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def dumps_json(doc: Any) -> str:
    """``doc`` as indented JSON text (ending in a newline) after :func:`jsonable`: every
    non-finite float anywhere in it becomes a string, never a bare ``NaN`` or
    ``Infinity`` (which strict JSON readers reject)."""
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"
