"""JSON as genbound writes and reads it: one converter for every file.

Every JSON file genbound writes (``report.json``, ``sweep.json``, a run's ``genbound.json``,
a PEFT export's ``adapter_config.json``) goes through :func:`dumps_json`. JSON has no
infinities or NaN, so non-finite floats are written as the strings ``"inf"``, ``"-inf"``
and ``"nan"`` (a bare ``NaN`` or ``Infinity``, which strict readers reject, is never
written); :func:`number` and :func:`decoded` read them back as floats. Integers stay
integers; dataclasses become objects; numpy and torch values become numbers and lists;
paths become strings and torch dtypes their names (``"float32"``).

Kept free of heavy imports: numpy and torch are never imported here (a value of theirs
can only exist once its library is loaded, so they are looked up in ``sys.modules``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import PurePath
from typing import Any

#: The strings a non-finite float is written as.
NON_FINITE = frozenset({"inf", "-inf", "nan"})


def finite_or_name(x: float) -> float | str:
    """``x`` itself when finite, else ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _array_value(obj: Any) -> tuple[bool, Any]:
    """(True, plain Python value) for a numpy or torch value, else (False, None)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            return True, obj.detach().cpu().tolist()  # bfloat16 too (numpy has no such dtype)
        if isinstance(obj, torch.dtype):
            return True, str(obj).removeprefix("torch.")
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray | np.generic):
        return True, obj.tolist()
    return False, None


def jsonable(obj: Any, *, skip: frozenset[str] = frozenset()) -> Any:
    """``obj`` as JSON-ready Python values, recursively.

    Dataclasses become objects of their fields (fields named in ``skip`` are left out, at
    every depth), mappings objects with string keys, tuples lists, numpy and torch values
    numbers and lists, paths strings, torch dtypes their names; every non-finite float
    becomes ``"inf"``, ``"-inf"`` or ``"nan"``. Other values are returned as they are.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: jsonable(getattr(obj, f.name), skip=skip)
            for f in dataclasses.fields(obj)
            if f.name not in skip
        }
    if isinstance(obj, dict):
        return {str(k): jsonable(v, skip=skip) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v, skip=skip) for v in obj]
    if isinstance(obj, float):  # numpy's float64 too (a float subclass)
        return finite_or_name(float(obj))
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    found, value = _array_value(obj)
    return jsonable(value, skip=skip) if found else obj


def dumps_json(doc: Any) -> str:
    """``doc`` as indented JSON text ending in a newline, after :func:`jsonable`: every
    non-finite float anywhere in it becomes a string, never a bare ``NaN`` or
    ``Infinity``. A value JSON cannot hold raises ``TypeError``."""
    return json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n"


def number(x: Any) -> float | None:
    """A JSON number, or one of the strings ``"inf"``, ``"-inf"``, ``"nan"`` written for a
    non-finite one, as a float; None for anything else (booleans included)."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str) and x in NON_FINITE:
        return float(x)
    return None


def decoded(obj: Any) -> Any:
    """A parsed JSON value with every ``"inf"``, ``"-inf"`` and ``"nan"`` string, at any
    depth, turned back into the float it was written for (the inverse of :func:`jsonable`
    on non-finite floats); everything else as it is."""
    if isinstance(obj, dict):
        return {k: decoded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decoded(v) for v in obj]
    if isinstance(obj, str) and obj in NON_FINITE:
        return float(obj)
    return obj
