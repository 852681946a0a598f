"""Sweep comparison: Kendall's tau against pair enumeration, the granulated form against a
hand computation, the bootstrap interval, and reading measures from report documents."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from genbound.compare import granulated_tau, kendall_tau, rank_correlations, sweep_rows


def _tau_by_pairs(x, y):
    """Kendall's tau-a by enumerating pairs (equal to tau-b when nothing is tied)."""
    c = d = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        c += s > 0
        d += s < 0
    return (c - d) / math.comb(len(x), 2)


def test_kendall_tau_equals_pair_enumeration():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 20):
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert kendall_tau(x, y) == pytest.approx(_tau_by_pairs(x, y), abs=1e-12)
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_b_with_ties_equals_scipy():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(4)
    for _ in range(50):
        n = int(rng.integers(2, 12))
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float)
        ref = kendalltau(x, y).statistic
        ours = kendall_tau(x, y)
        assert (math.isnan(ref) and math.isnan(ours)) or ours == pytest.approx(ref, abs=1e-12)


def _row(variant, rank, m, gap):
    return {"variant": variant, "rank": rank, "chain": 1, "seed": 0, "m": m, "gap_error": gap}


def test_granulated_tau_by_hand():
    # 2 variants x 3 ranks; within each variant the measure orders the gap perfectly (tau 1);
    # within each rank the two variants are ordered oppositely (tau -1).
    rows = [
        _row("a", 1, 1.0, 0.10),
        _row("a", 2, 2.0, 0.20),
        _row("a", 4, 3.0, 0.30),
        _row("b", 1, 5.0, 0.05),
        _row("b", 2, 6.0, 0.15),
        _row("b", 4, 7.0, 0.25),
    ]
    # h = rank: groups by variant, tau 1 in both; h = variant: groups by rank, tau -1 in all
    g = granulated_tau(rows, "m", "gap_error", ("variant", "rank", "chain", "seed"))
    assert g == pytest.approx((1.0 + -1.0) / 2)
    # only one hyper-parameter varying on its own: undefined
    assert granulated_tau(rows[:3], "m", "gap_error", ("variant", "rank")) is None
    confounded = [_row("a", 1, 1.0, 0.1), _row("b", 2, 2.0, 0.2), _row("c", 4, 3.0, 0.3)]
    assert granulated_tau(confounded, "m", "gap_error", ("variant", "rank")) is None


def test_rank_correlations_bootstrap_and_missing_values(monkeypatch):
    import genbound.compare as compare

    monkeypatch.setitem(compare.MEASURES, "m", (lambda d: None, "test measure"))
    rng = np.random.default_rng(1)
    rows = [
        {"variant": "v", "rank": i, "m": float(x), "gap_error": float(x + 0.3 * e)}
        for i, (x, e) in enumerate(zip(rng.normal(size=12), rng.normal(size=12), strict=True))
    ]
    rows.append({"variant": "v", "rank": 99, "m": None, "gap_error": 0.1})  # skipped
    (c,) = rank_correlations(rows, measures=["m"], n_boot=400, seed=3)
    x = [r["m"] for r in rows[:12]]
    y = [r["gap_error"] for r in rows[:12]]
    assert c.n == 12 and c.tau == pytest.approx(_tau_by_pairs(x, y), abs=1e-12)
    assert -1 <= c.low <= c.high <= 1 and c.n_valid == 400 and c.level == 0.9
    # the interval is the percentile interval of the resampled taus (same seed, same draws),
    # each resample's tau by scipy
    from scipy.stats import kendalltau

    idx = np.random.default_rng(3).integers(0, 12, (400, 12))
    boots = [kendalltau(np.array(x)[i], np.array(y)[i]).statistic for i in idx]
    boots = [t for t in boots if not math.isnan(t)]
    assert c.low == pytest.approx(np.quantile(boots, 0.05)) and c.high == pytest.approx(
        np.quantile(boots, 0.95)
    )


def test_sweep_rows_read_report_documents():
    doc = {
        "checkpoint": {"variant": "lora", "num_trainable": 100, "hparams": {"rank": 4, "chain": 1}},
        "data": {"reference": {"kwargs": {"seed": 2}}},
        "gap": {
            "error_gap": 0.05,
            "loss_gap": 0.1,
            "train": {"error": 0.2},
            "test": {"error": 0.25},
        },
        "bounds": {"mi": {"bound": 3.0, "occam_bound": 3.1}, "compression": None, "theorem1": None},
        "updates": [
            {"frobenius_norm": 1.0, "spectral_norm": 0.5, "effective_rank": 2.0},
            {"frobenius_norm": 2.0, "spectral_norm": 1.5, "effective_rank": 4.0},
        ],
    }
    (row,) = sweep_rows({"run1": doc})
    assert row["run"] == "run1" and row["variant"] == "lora" and row["rank"] == 4
    assert row["seed"] == 2 and row["num_trainable"] == 100.0
    assert row["gap_error"] == 0.05 and row["test_error"] == 0.25
    assert row["mi_bound"] == 3.0 and row["compression_bound"] is None
    assert row["sum_dW_frobenius"] == 3.0 and row["mean_effective_rank"] == 3.0
