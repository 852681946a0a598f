"""How sweep.md prints the statistics of a measure against the gap, and reads them in words.

The cells of the correlation table (tau with its interval and permutation p-value, the
granulated tau with its interval, the worst sign-error), the sentence on the smallest |tau|
the sweep can detect, the pairs the sign-error rests on, and the plain-words reading: which
measures track the gap, which go against their claim, which cannot be told from noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from genbound.compare import VERDICTS, Correlation, measure_description
from genbound.numbers import format_count, format_number
from genbound.sweep_stats import RESOLUTION, detectable_tau

#: Marks a sign-error whose direction is the sign of tau (the measure claims none).
FROM_TAU = "†"


def signed(v: float | None) -> str:
    """A tau with its sign and three decimals; ``n/a`` when undefined."""
    return "n/a" if v is None or math.isnan(v) else f"{v:+.3f}"


def p_value(c: Correlation) -> str:
    """``p 0.031`` (exact) or ``p ≈ 0.031`` (Monte Carlo); ``p n/a`` without a test."""
    t = c.permutation
    if t is None:
        return "p n/a"
    return f"p {'≈ ' if t.method != 'exact' else ''}{format_number(t.p_value, 2)}"


def tau_cell(c: Correlation) -> str:
    """``+0.524 [+0.100, +0.810], p 0.031``."""
    return f"{signed(c.tau)} [{signed(c.low)}, {signed(c.high)}], {p_value(c)}"


def granulated_cell(c: Correlation) -> str:
    """``+0.250 [-0.100, +0.600]``; ``n/a`` when undefined."""
    if c.granulated is None:
        return "n/a"
    if c.granulated_low is None:
        return f"{signed(c.granulated)} [n/a]"
    return f"{signed(c.granulated)} [{signed(c.granulated_low)}, {signed(c.granulated_high)}]"


def sign_error_cell(c: Correlation) -> str:
    """``0.25 (rank, 8 pairs)``: the worst sign-error, where, over how many resolved pairs;
    ``n/a`` with the reason when no pair counts."""
    s = c.sign_error
    if s is None:
        return "n/a (no direction)"
    mark = FROM_TAU if s.sign_from == "tau" else ""
    if s.worst is None:
        pairs = sum(p.pairs for p in s.per_hparam)
        return "n/a (no pairs)" if not pairs else f"n/a (0 of {pairs} pairs resolved){mark}"
    (worst,) = (p for p in s.per_hparam if p.hparam == s.worst_hparam)
    return f"{s.worst:.2f} ({s.worst_hparam}, {format_count(worst.resolved)} pairs){mark}"


def detectable_line(rows: Sequence[Mapping], target: str) -> str:
    """The smallest |tau| the sweep's runs with a measured gap can detect at 5 %."""
    n = sum(isinstance(v := r.get(target), int | float) and math.isfinite(v) for r in rows)
    d = detectable_tau(n)
    how = (
        "exact, from all n! orderings"
        if d.method == "exact"
        else "normal approximation 1.96 sqrt(2(2n+5)/(9n(n-1)))"
    )
    if d.tau is None:
        return (
            f"With {n} runs no tau is significant at 5 % (two-sided): a permutation test "
            "needs at least 5 runs."
        )
    return (
        f"With {n} runs, |tau| must reach {d.tau:.2f} to be significant at 5 % "
        f"(two-sided, no ties; {how}); a smaller true correlation goes undetected."
    )


def pairs_line(corr: Sequence[Correlation]) -> str | None:
    """The pairs the sign-error rests on, per hyper-parameter (of the measure seen in the
    most runs), and how many were unresolved; None when no pair of runs differs in one
    hyper-parameter alone."""
    with_pairs = [c for c in corr if c.sign_error is not None and c.sign_error.per_hparam]
    if not with_pairs:
        return None
    best = max(with_pairs, key=lambda c: c.n)
    parts = [
        f"{p.hparam} {format_count(p.resolved)} of {format_count(p.pairs)}"
        for p in best.sign_error.per_hparam
    ]
    from_tau = any(c.sign_error.sign_from == "tau" for c in with_pairs)
    return (
        "Sign-error (Dziugaite et al. 2020): over pairs of runs that differ in one "
        f"hyper-parameter alone and whose gaps differ by more than {RESOLUTION:g} standard "
        "errors of the difference, the fraction the measure orders against its claimed "
        "direction (a tie counts 1/2); the table shows the worst hyper-parameter. Pairs "
        f"resolved ({best.n} runs): {', '.join(parts)}; the others are left out."
        + (
            f" {FROM_TAU}: the measure claims no direction; the sign of its tau is used."
            if from_tau
            else ""
        )
    )


def reading_markdown(corr: Sequence[Correlation], alpha: float = 0.05) -> list[str]:
    """The ``## Reading`` section: the informative measures grouped by their verdict."""
    ranked = sorted((c for c in corr if c.informative), key=lambda c: c.rank)
    if not ranked:
        return []
    level = f"{ranked[0].level:.0%}"
    lines = [
        "",
        "## Reading",
        "",
        f"A measure tracks the gap when its {level} interval excludes 0 on the side it "
        f"claims and its permutation p-value is below {alpha:g}.",
        "",
    ]
    for key, words in VERDICTS.items():
        mine = [c for c in ranked if c.verdict == key]
        if mine:
            lines.append(f"- {len(mine)} {words}: " + "; ".join(_named(c) for c in mine) + ".")
    if not any(c.verdict == "tracks" for c in ranked):
        lines.append("- No measure tracks the gap as it claims on these runs.")
    skipped = sum(not c.informative for c in corr)
    if skipped:
        lines.append(f"- {skipped} cannot be judged on this sweep (not ranked, listed below).")
    return lines


def _named(c: Correlation) -> str:
    """A measure with its numbers, for the reading."""
    parts = [f"tau {signed(c.tau)} [{signed(c.low)}, {signed(c.high)}]", p_value(c)]
    if c.granulated is not None:
        parts.append(f"granulated {granulated_cell(c)}")
    if c.sign_error is not None and c.sign_error.worst is not None:
        parts.append(f"worst sign-error {c.sign_error.worst:.2f} ({c.sign_error.worst_hparam})")
    return f"{measure_description(c.measure)} ({', '.join(parts)})"
