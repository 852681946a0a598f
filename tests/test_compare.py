"""Sweep comparison: Kendall's tau against pair enumeration, the granulated form against a
hand computation, the bootstrap interval, reading measures from report documents, which
measures are uninformative, and what sweep.json / sweep.md say."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from genbound.compare import (
    MEASURES,
    RELATIVE_PRECISION,
    granulated_tau,
    kendall_tau,
    rank_correlations,
    sweep_rows,
)


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

    monkeypatch.setitem(compare.MEASURES, "m", compare.Measure(lambda d: None, "test measure"))
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
    assert row["seed"] == 2 and row["num_trainable"] == 100
    assert isinstance(row["num_trainable"], int)
    assert row["gap_error"] == 0.05 and row["test_error"] == 0.25
    assert row["mi_bound"] == 3.0 and row["compression_bound"] is None
    assert row["sum_dW_frobenius"] == 3.0 and row["mean_effective_rank"] == 3.0


def _doc(i, *, gap=True, compression=0.9999999899, trivial=2 / 3, trace_reliable=True):
    """A report document of run ``i`` (gaps and measures vary with i)."""
    doc = {
        "checkpoint": {"variant": "lora", "num_trainable": 1000 * (i + 1), "hparams": {"rank": i}},
        "data": {"reference": {"kwargs": {"seed": 0}}},
        "bounds": {
            "mi": {"bound": 5.0 + i, "occam_bound": 5.5 + i, "loss": {"loss_range": 1.0}},
            "compression": {"bound": compression, "vacuous_at": trivial, "code_bits": 900 + i},
            "theorem1": {"log10_phi_dW": 2.0 - i},
        },
        "updates": [{"frobenius_norm": 1.0 + i, "spectral_norm": 0.5, "effective_rank": 2.0}],
        "curvature": {
            "top_eigenvalue": 3.0 + 0.5 * i,
            "trace": {"trace": 10.0 + i, "stderr": 0.1, "reliable": trace_reliable},
            "density": {"trace": 12.0 + i, "trace_stderr": 0.2, "trace_reliable": True},
        },
        "landscapes": {
            "random-filter": {"curvature": [0.1 * (i + 1)], "flat_fraction": 0.5, "ascent": 0.01},
            "path": {"curvature": [0.2 + i], "flat_fraction": 0.1, "ascent": 0.3},
        },
    }
    if gap:
        doc["gap"] = {
            "error_gap": 0.01 * (i + 1),
            "loss_gap": 0.02,
            "train": {"error": 0.1},
            "test": {"error": 0.1 + 0.01 * (i + 1)},
        }
    return doc


def test_curvature_and_landscape_scalars_are_compared():
    """Every curvature and landscape scalar of a report is a measure of the sweep, read from
    the report's own fields; an unresolved Hutch++ trace falls back to a resolved SLQ one."""
    docs = {f"r{i}": _doc(i) for i in range(4)}
    rows = sweep_rows(docs)
    assert [r["hessian_top_eigenvalue"] for r in rows] == [3.0, 3.5, 4.0, 4.5]
    assert [r["hessian_trace"] for r in rows] == [10.0, 11.0, 12.0, 13.0]
    assert [r["landscape_curvature"] for r in rows] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [r["landscape_flat_fraction"] for r in rows] == [0.5] * 4
    assert [r["path_curvature"] for r in rows] == [0.2, 1.2, 2.2, 3.2]
    (row,) = sweep_rows({"x": _doc(1, trace_reliable=False)})
    assert row["hessian_trace"] == 13.0  # the SLQ estimate
    unresolved = _doc(1, trace_reliable=False)
    unresolved["curvature"]["density"]["trace_reliable"] = False
    assert sweep_rows({"x": unresolved})[0]["hessian_trace"] is None
    corr = {c.measure: c for c in rank_correlations(rows, n_boot=50)}
    for m in ("hessian_top_eigenvalue", "hessian_trace", "landscape_curvature", "path_curvature"):
        assert corr[m].informative and corr[m].tau == pytest.approx(1.0)
    assert not corr["landscape_flat_fraction"].informative  # the same in every run
    assert "same value in every run" in corr["landscape_flat_fraction"].why_uninformative


def test_vacuous_bound_is_not_ranked():
    """Compression bounds between 0.9999999899 and 1, all above chance: the bound is
    uninformative whatever its tau (here +1 against the gap), and not ranked."""
    docs = {f"r{i}": _doc(i, compression=0.9999999899 + 1e-9 * i) for i in range(4)}
    docs["r3"]["bounds"]["compression"]["bound"] = 1.0
    rows = sweep_rows(docs)
    assert all("compression_bound" in r["vacuous"] for r in rows)
    corr = {c.measure: c for c in rank_correlations(rows, n_boot=50)}
    c = corr["compression_bound"]
    assert c.tau == pytest.approx(1.0) and not c.informative and c.rank is None
    assert c.why_uninformative.startswith("vacuous in every run")
    assert not corr["mi_bound"].informative  # 5 to 8 on a 0-1 loss
    ranks = sorted(x.rank for x in corr.values() if x.informative)
    assert ranks == list(range(1, len(ranks) + 1))
    by_rank = sorted((x for x in corr.values() if x.informative), key=lambda x: x.rank)
    assert [x.tau for x in by_rank] == sorted((x.tau for x in by_rank), reverse=True)
    # one run below chance: the bound says something there, so it is ranked
    docs["r0"]["bounds"]["compression"]["bound"] = 0.4
    corr = {c.measure: c for c in rank_correlations(sweep_rows(docs), n_boot=50)}
    assert corr["compression_bound"].informative and corr["compression_bound"].rank is not None


def test_differences_below_numerical_precision_are_not_ranked():
    """A measure whose values differ by less than RELATIVE_PRECISION of their size (here a
    norm of about 3 varying by 1e-9) is uninformative; 1e-3 relative is ranked."""
    docs = {f"r{i}": _doc(i) for i in range(4)}
    for i, doc in enumerate(docs.values()):
        doc["updates"][0]["spectral_norm"] = 3.0 + 1e-9 * i
    corr = {c.measure: c for c in rank_correlations(sweep_rows(docs), n_boot=50)}
    assert not corr["sum_dW_spectral"].informative
    assert "numerical precision" in corr["sum_dW_spectral"].why_uninformative
    assert 3e-9 < RELATIVE_PRECISION * 3.0
    for i, doc in enumerate(docs.values()):
        doc["updates"][0]["spectral_norm"] = 3.0 + 3e-3 * i
    corr = {c.measure: c for c in rank_correlations(sweep_rows(docs), n_boot=50)}
    assert corr["sum_dW_spectral"].informative


def test_sweep_files_say_what_was_ranked_and_print_honest_numbers(tmp_path):
    """sweep.json keeps counts as integers and carries the reason per measure; sweep.md
    prints 0.9999999978 as 1 - 2.2e-9 (not 1), separates thousands in every count, ranks
    only informative measures and lists the others with the reason."""
    import json

    from genbound.report.sweep import FIGURE, write_sweep

    docs = {f"r{i}": _doc(i, compression=0.9999999978) for i in range(3)}
    docs["r0"]["checkpoint"]["num_trainable"] = 1155
    docs["r2"]["checkpoint"]["num_trainable"] = 111747
    out = write_sweep(tmp_path / "sweep", docs)
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["num_trainable"] for r in doc["rows"]] == [1155, 2000, 111747]
    assert all(isinstance(r["compression_bits"], int) for r in doc["rows"])
    by_name = {c["measure"]: c for c in doc["correlations"]}
    assert set(by_name) == set(MEASURES)
    assert by_name["compression_bound"]["informative"] is False
    assert by_name["compression_bound"]["rank"] is None
    assert by_name["compression_bound"]["why_uninformative"].startswith("vacuous")
    assert by_name["hessian_top_eigenvalue"]["rank"] >= 1
    md = (out / "sweep.md").read_text()
    assert "1 - 2.2e-9 (vacuous)" in md and "| 1 (vacuous)" not in md
    assert "| 1,155 |" in md and "| 111,747 |" in md and "| 1155 |" not in md
    ranked_table = md.split("| rank | measure |")[1].split("Not ranked")[0]
    assert "compression bound" not in ranked_table and "top Hessian eigenvalue" in ranked_table
    assert "- compression bound on test error: vacuous in every run" in md
    assert (out / FIGURE).is_file()


def test_data_free_sweep_says_so_and_draws_nothing(tmp_path):
    """Without a measured gap: one sentence naming --data, no tau table of nan with n = 0,
    no figure of empty panels."""
    import json

    from genbound.report.sweep import FIGURE, NO_GAP, write_sweep

    docs = {f"r{i}": _doc(i, gap=False) for i in range(3)}
    out = write_sweep(tmp_path / "sweep", docs)
    md = (out / "sweep.md").read_text()
    assert NO_GAP in md and "--data" in NO_GAP
    assert "| rank |" not in md and "nan" not in md
    assert not (out / FIGURE).exists()
    doc = json.loads((out / "sweep.json").read_text())
    assert all(c["n"] == 0 and not c["informative"] for c in doc["correlations"])
    assert all(c["why_uninformative"].startswith("no run has") for c in doc["correlations"])
