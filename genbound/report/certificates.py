"""The sweep's certificates: each run's compression and Gaussian PAC-Bayes bounds next to
its measured test error, the compression bound union-bounded over the sweep, and what a
subspace run's certificate costs in accuracy against the same variant trained in full.

A run's compression bound assumes its configuration (variant, rank, targets, d, seed)
was fixed before training. A researcher who picks the best of the sweep's M
configurations after seeing the data pays ln M nats: each candidate b of each run is then
a bound at confidence delta / (M #b), so the run's bound becomes

    min over its evaluated candidates b of  R kl^-1(e_b / R, rhs_b + ln(M) / N)

(with rhs_b, e_b, N and R from its report.json: ``bounds.compression``). Candidates the
report did not evaluate are left out, which can only make the union-bounded bound larger,
never invalid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from genbound.bounds.kl import kl_inverse
from genbound.measures.reading import get as _get
from genbound.measures.reading import number
from genbound.numbers import format_probability

__all__ = ["certificate_markdown", "certificate_rows", "union_bounded"]


def union_bounded(compression: Mapping[str, Any], num_configs: int) -> float | None:
    """The bound of one report's ``bounds.compression`` entry with ln(num_configs) / N
    nats added to every evaluated candidate's rhs (module docstring); None without an
    evaluated candidate (or without the fields it needs)."""
    n, r = _finite(compression.get("n_train")), _finite(compression.get("error_range", 1.0))
    if n is None or n <= 0 or r is None or r <= 0:
        return None
    extra = math.log(num_configs) / n
    bounds = []
    for c in compression.get("candidates") or ():
        if not isinstance(c, Mapping) or not c.get("evaluated"):
            continue
        err, rhs = _finite(c.get("train_error")), _finite(c.get("rhs_nats"))
        if err is not None and rhs is not None:
            bounds.append(r * kl_inverse(err / r, rhs + extra))
    return min(bounds) if bounds else None


def _finite(v: Any) -> float | None:
    x = number(v)
    return x if x is not None and math.isfinite(x) else None


def certificate_rows(docs: Mapping[str, Mapping]) -> list[dict[str, Any]]:
    """One row per report with a compression or Gaussian bound: ``run``, ``variant``,
    ``subspace_d`` (None for a run that trained its factors), ``test_error``,
    ``compression_bound``, ``union_bound`` (over the M reports with a compression bound),
    ``num_configs`` (M), ``pacbayes_bound``, ``full_test_error`` (for a subspace run: the
    test error of the sweep's run of the same variant, rank and chain without a subspace;
    None when there is none or several)."""
    with_compression = [d for d in docs.values() if _get(d, "bounds", "compression")]
    m = max(1, len(with_compression))
    plain: dict[tuple, list[float | None]] = {}
    for doc in docs.values():
        ck = doc.get("checkpoint", {})
        if not ck.get("subspace"):
            plain.setdefault(_config(ck), []).append(_get(doc, "gap", "test", "error"))
    rows = []
    for name, doc in docs.items():
        comp, gauss = _get(doc, "bounds", "compression"), _get(doc, "bounds", "pacbayes")
        if not comp and not gauss:
            continue
        ck = doc.get("checkpoint", {})
        sub = ck.get("subspace") or None
        full = plain.get(_config(ck), []) if sub else []
        rows.append(
            {
                "run": name,
                "variant": ck.get("variant"),
                "subspace_d": sub.get("d") if sub else None,
                "test_error": _get(doc, "gap", "test", "error"),
                "compression_bound": comp.get("bound") if comp else None,
                "union_bound": union_bounded(comp, m) if comp else None,
                "num_configs": m,
                "pacbayes_bound": gauss.get("bound") if gauss else None,
                "full_test_error": full[0] if len(full) == 1 else None,
                "chance": (comp or gauss).get("vacuous_at"),
            }
        )
    return rows


def _config(ck: Mapping) -> tuple:
    hp = ck.get("hparams") or {}
    return (ck.get("variant"), hp.get("rank"), hp.get("chain"), tuple(hp.get("targets") or ()))


def _p(v: float | None, chance: float | None = None) -> str:
    if v is None:
        return "—"
    text = format_probability(v)
    return f"{text} (vacuous)" if chance is not None and v >= chance else text


def certificate_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``## Certificates`` section of sweep.md (empty without rows)."""
    if not rows:
        return []
    m = rows[0]["num_configs"]
    lines = [
        "",
        "## Certificates",
        "",
        "Bounds on each run's test error (with probability >= 0.95), next to the measured "
        "one. A compression bound assumes the run's configuration (variant, rank, targets, "
        "d, seed) was fixed before training; picking the best of these "
        f"M = {m} configurations after seeing the data costs ln M nats, which the "
        "union-bounded column pays. A subspace run (d) trains only z in a random subspace "
        "of its adapter; the last column is the test error of the same variant trained "
        "in full, so the difference is what the certificate costs in accuracy. The Gaussian "
        "bound is on the randomised predictor around the trained tensors.",
        "",
        "| run | d | test err | compression bound | union-bounded (M = "
        f"{m}) | Gaussian PAC-Bayes | test err, full adapter |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ch = r["chance"]
        d = f"{r['subspace_d']:,}" if r["subspace_d"] is not None else "—"
        lines.append(
            f"| {r['run']} | {d} | {_p(r['test_error'])} | {_p(r['compression_bound'], ch)} | "
            f"{_p(r['union_bound'], ch)} | {_p(r['pacbayes_bound'], ch)} | "
            f"{_p(r['full_test_error'])} |"
        )
    return lines
