"""How genbound prints numbers: one set of formatters for every report, table and sweep.

Rules (each printed value can be read back without being misled):

* a probability, error or bound in [0, 1] never prints as ``1`` or ``0`` unless it is
  exactly that: 0.9999999978 prints as ``1 - 2.2e-9`` and 3e-12 as ``3e-12``;
* counts carry thousands separators (``1,155`` and ``111,747`` alike);
* non-finite values print as ``inf``, ``-inf`` and ``nan``; a missing value as ``—``.

Kept free of heavy imports (the command line uses it before torch is loaded).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

MISSING = "—"


def _short_exp(text: str) -> str:
    """``2.2e-09`` -> ``2.2e-9``, ``1e+05`` -> ``1e5``."""
    if "e" not in text:
        return text
    mantissa, exp = text.split("e")
    return f"{mantissa}e{int(exp)}"


def _non_finite(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _near_one(x: float, shown: str) -> str:
    """``shown`` (a rendering of ``x``) unless it reads as exactly -1, 0 or 1 while ``x``
    is not that: then 1 (or -1) plus or minus the distance, or ``x`` itself, with two
    significant digits."""
    value = float(shown.replace(",", ""))
    if value == x or value not in (-1.0, 0.0, 1.0):
        return shown
    if value == 0.0:
        return _short_exp(f"{x:.2g}")
    gap = _short_exp(f"{abs(x - value):.2g}")
    return f"{'-' if value < 0 else ''}1 {'+' if x > value else '-'} {gap}"


def format_probability(p: float | None, decimals: int = 4) -> str:
    """A probability, 0-1 error or bound on one, with ``decimals`` decimals (``0.3937``),
    except where that would round onto 1 or 0: ``1 - 2.2e-9``, ``3e-12``. Exactly 1 and 0
    print with their decimals (``1.0000``), so a printed ``1.0000`` is exactly 1."""
    if p is None:
        return MISSING
    x = float(p)
    if not math.isfinite(x):
        return _non_finite(x)
    return _near_one(x, f"{x:.{decimals}f}")


def format_count(n: int | float | None) -> str:
    """An integer count with thousands separators: ``1,155``."""
    if n is None:
        return MISSING
    if isinstance(n, float) and not math.isfinite(n):
        return _non_finite(n)
    return f"{round(n):,}"


def format_number(x: object, digits: int = 4) -> str:
    """Any value of a table cell: integers as counts (``1,155``), floats with ``digits``
    significant digits (``0.06458``; from 1,000 on as ``12,346``), never rounded onto 1 or
    0 (see :func:`format_probability`); strings as they are; None as ``—``."""
    if x is None:
        return MISSING
    if isinstance(x, bool) or not isinstance(x, Real):
        return str(x)
    if isinstance(x, Integral):
        return f"{int(x):,}"
    v = float(x)
    if not math.isfinite(v):
        return _non_finite(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return _near_one(v, _short_exp(f"{v:.{digits}g}"))


def format_pm(x: float, stderr: float, decimals: int = 4) -> str:
    """``x ± stderr`` with fixed decimals (a mean and its standard error)."""
    return f"{format_probability(x, decimals)} ± {stderr:.{decimals}f}"
