"""Sweep statistics: the permutation p-value against scipy (exact, and a brute-force
permutation test with ties), the smallest detectable tau, the granulated tau's bootstrap
against a row-by-row reference, the sign-error against pair enumeration, and what
sweep.json, sweep.md, sweep.html and the figure show."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
from scipy.stats import kendalltau, permutation_test

from genbound import compare
from genbound.sweep_stats import (
    RESOLUTION,
    detectable_tau,
    granulated_taus,
    hparam_codes,
    permutation_tests,
    sign_error,
)


def _p(x, y, seed=0):
    (t,) = permutation_tests(np.asarray(x, dtype=float)[None], y, rng=np.random.default_rng(seed))
    return t


def test_exact_p_value_equals_scipy_without_ties():
    rng = np.random.default_rng(0)
    for n in range(3, 10):
        for _ in range(3):
            x, y = rng.normal(size=n), rng.normal(size=n)
            t = _p(x, y)
            assert t.method == "exact" and t.permutations == math.factorial(n)
            ref = kendalltau(x, y, method="exact").pvalue
            assert t.p_value == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_exact_p_value_with_ties_equals_a_brute_force_permutation_test():
    """Tied measures and gaps: scipy's exact permutation test of |tau-b| (every ordering
    of one sample against the other) gives the same p."""
    rng = np.random.default_rng(1)
    for n in (5, 6, 7):
        x = rng.integers(0, 3, n).astype(float)
        y = rng.integers(0, 4, n).astype(float)
        if len(set(x)) == 1 or len(set(y)) == 1:
            continue
        ref = permutation_test(
            (y,),
            lambda g, x=x: abs(kendalltau(x, g).statistic),
            permutation_type="pairings",
            n_resamples=np.inf,
            alternative="greater",
        ).pvalue
        assert _p(x, y).p_value == pytest.approx(ref, rel=1e-12)


def test_monte_carlo_p_value_beyond_nine_runs():
    """12 runs: 20,000 random orderings, p = (count + 1) / 20,001 within four Monte Carlo
    standard errors of scipy's exact p, and the same p for the same seed."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    t = _p(x, y, seed=5)
    assert t.method == "monte carlo" and t.permutations == 20_000
    count = t.p_value * 20_001 - 1
    assert count == pytest.approx(round(count), abs=1e-6)
    assert t.mc_stderr == pytest.approx(math.sqrt(t.p_value * (1 - t.p_value) / 20_000))
    ref = kendalltau(x, y, method="exact").pvalue
    assert abs(t.p_value - ref) < 4 * t.mc_stderr + 1 / 20_001
    assert _p(x, y, seed=5) == t
    assert _p(np.ones(12), y) is None and _p([1.0], [2.0]) is None


def test_detectable_tau():
    """0.71 (7 runs), 0.30 (23), 0.20 (47); exact up to 9 runs: the returned tau is
    significant by scipy's exact test and the next smaller attainable one is not."""
    assert detectable_tau(7).tau == pytest.approx(15 / 21) and detectable_tau(7).method == "exact"
    assert detectable_tau(23).tau == pytest.approx(0.30, abs=0.01)
    assert detectable_tau(47).tau == pytest.approx(0.20, abs=0.01)
    assert detectable_tau(47).method == "normal approximation"
    assert detectable_tau(4).tau is None  # 4! = 24 orderings: p >= 2/24 for every tau
    for n in range(5, 10):
        s = round(detectable_tau(n).tau * math.comb(n, 2))
        assert _p_with_concordance(n, s) <= 0.05 < _p_with_concordance(n, s - 2)


def _p_with_concordance(n, s):
    """scipy's exact p of a ranking of n runs with S = s (concordant - discordant pairs):
    (C(n,2) - s) / 2 adjacent swaps of ascending neighbours, each one more discordance."""
    y, d = list(range(n)), (math.comb(n, 2) - s) // 2
    for i in range(n):
        for j in range(n - 1 - i):
            if d and y[j] < y[j + 1]:
                y[j], y[j + 1] = y[j + 1], y[j]
                d -= 1
    assert d == 0
    return kendalltau(range(n), y, method="exact").pvalue


def _granulated_by_rows(rows, hparams):
    """The granulated tau, row by row, with scipy's tau (the definition of Jiang et al.)."""

    def varies_alone(h):
        seen = {}
        for r in rows:
            key = tuple(repr(r[o]) for o in hparams if o != h)
            seen.setdefault(key, set()).add(repr(r[h]))
        return any(len(v) > 1 for v in seen.values())

    varying = [h for h in hparams if varies_alone(h)]
    if len(varying) < 2:
        return math.nan
    per_h = []
    for h in varying:
        groups = {}
        for r in rows:
            groups.setdefault(tuple(repr(r[o]) for o in varying if o != h), []).append(r)
        taus = [
            _tau_or_blind([r["m"] for r in g], [r["gap_error"] for r in g])
            for g in groups.values()
            if len({repr(r[h]) for r in g}) > 1
        ]
        taus = [t for t in taus if not math.isnan(t)]
        if taus:
            per_h.append(np.mean(taus))
    return float(np.mean(per_h)) if per_h else math.nan


def _tau_or_blind(m, g):
    """scipy's tau-b; 0 for a constant measure against a varying gap."""
    if len(set(m)) == 1 and len(set(g)) > 1:
        return 0.0
    return kendalltau(m, g).statistic


def _grid_rows(seed=0):
    """3 ranks x 2 epochs x 2 training sizes, one run each, with noisy gaps."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (rank, epochs, n) in enumerate(itertools.product((2, 4, 8), (1, 3), (100, 400))):
        gap = 0.01 * rank + 0.03 * epochs - 0.00005 * n + 0.01 * rng.normal()
        rows.append(
            {
                "run": f"r{i}",
                "variant": "lora",
                "rank": rank,
                "epochs": epochs,
                "n_train": n,
                "m": gap + 0.02 * rng.normal(),
                "gap_error": gap,
                "gap_error_stderr": 0.004 + 0.002 * rng.random(),
                "vacuous": [],
            }
        )
    return rows


def test_granulated_bootstrap_equals_row_by_row_reference(monkeypatch):
    """The granulated tau and its interval: each resample (the same draws) recomputed by
    the row-by-row definition; the interval is their percentile interval."""
    monkeypatch.setitem(compare.MEASURES, "m", compare.Measure(lambda d: None, "test measure"))
    rows = _grid_rows()
    hp = ("variant", "rank", "epochs", "n_train")
    (c,) = compare.rank_correlations(rows, measures=["m"], hparams=hp, n_boot=60, seed=4)
    assert c.granulated == pytest.approx(_granulated_by_rows(rows, hp), abs=1e-12)
    idx = np.random.default_rng([4, 2]).integers(0, len(rows), (60, len(rows)))
    ref = np.array([_granulated_by_rows([rows[i] for i in draw], hp) for draw in idx])
    ref = ref[np.isfinite(ref)]
    assert c.granulated_n_valid == ref.size > 30
    assert c.granulated_low == pytest.approx(np.quantile(ref, 0.05), abs=1e-12)
    assert c.granulated_high == pytest.approx(np.quantile(ref, 0.95), abs=1e-12)
    # several measures at once give each its own value
    codes = hparam_codes([[r[h] for h in hp] for r in rows])
    x = np.array([[r["m"] for r in rows], [-r["m"] for r in rows]])
    y = np.array([r["gap_error"] for r in rows])
    assert granulated_taus(codes, x, y) == pytest.approx([c.granulated, -c.granulated])


def test_granulated_tau_scores_a_blind_measure_zero():
    """D depends on the rank alone; the gap on rank and epochs. Within ranks (h = epochs)
    D is constant while the gap moves: 0 there, +1 within epochs (h = rank): 0.5."""
    rows = [
        {"rank": r, "epochs": e, "m": 100.0 * r, "gap_error": 0.01 * r + 0.05 * e}
        for r in (2, 8)
        for e in (1, 3, 6)
    ]
    assert compare.granulated_tau(rows, "m", "gap_error", ("rank", "epochs")) == 0.5
    assert _granulated_by_rows(rows, ("rank", "epochs")) == 0.5


def _sign_error_by_pairs(rows, hparams, sign):
    """Per hyper-parameter: (pairs, resolved, mean error over resolved) by enumeration."""
    out = {}
    for a, b in itertools.combinations(rows, 2):
        differ = [h for h in hparams if repr(a.get(h)) != repr(b.get(h))]
        if len(differ) != 1:
            continue
        pairs, errors = out.setdefault(differ[0], ([], []))
        pairs.append(1)
        dg = a["gap_error"] - b["gap_error"]
        se = math.sqrt(a["gap_error_stderr"] ** 2 + b["gap_error_stderr"] ** 2)
        if abs(dg) > RESOLUTION * se:
            errors.append((1 - sign * np.sign(a["m"] - b["m"]) * np.sign(dg)) / 2)
    return {h: (len(p), len(e), float(np.mean(e)) if e else None) for h, (p, e) in out.items()}


@pytest.mark.parametrize("larger_gap", [True, False, None])
def test_sign_error_equals_pair_enumeration(monkeypatch, larger_gap):
    monkeypatch.setitem(
        compare.MEASURES, "m", compare.Measure(lambda d: None, "m", larger_gap=larger_gap)
    )
    rows = _grid_rows(1)
    rows[3]["m"] = rows[2]["m"]  # a tie counts 1/2
    hp = ("variant", "rank", "epochs", "n_train")
    (c,) = compare.rank_correlations(rows, measures=["m"], hparams=hp, n_boot=20)
    sign = {True: 1, False: -1, None: int(np.sign(c.tau))}[larger_gap]
    ref = _sign_error_by_pairs(rows, hp, sign)
    s = c.sign_error
    assert s.expected_sign == sign and s.sign_from == ("tau" if larger_gap is None else "claim")
    got = {p.hparam: (p.pairs, p.resolved, p.error) for p in s.per_hparam}
    assert set(got) == set(ref) == {"rank", "epochs", "n_train"}
    for h, (pairs, resolved, err) in ref.items():
        assert got[h][:2] == (pairs, resolved) and got[h][2] == pytest.approx(err)
    assert 0 < sum(r[1] for r in ref.values()) < sum(r[0] for r in ref.values())  # some dropped
    worst = max(v[2] for v in ref.values() if v[2] is not None)
    first = next(h for h in hp if h in ref and ref[h][2] is not None and ref[h][2] >= worst - 1e-12)
    assert (s.worst, s.worst_hparam) == (pytest.approx(worst), first)  # ties: the first


def test_sign_error_without_standard_errors_leaves_every_pair_out():
    codes = hparam_codes([[1], [2], [3]])
    s = sign_error(codes, ["rank"], np.arange(3.0), np.arange(3.0), np.full(3, np.nan), 1)
    assert s.per_hparam[0].pairs == 3 and s.per_hparam[0].resolved == 0 and s.worst is None


def test_rows_carry_hyper_parameters_and_the_gap_standard_error():
    doc = {
        "checkpoint": {
            "variant": "lora",
            "n_train": 400,
            "hparams": {"rank": 4, "chain": 1, "lr": 0.002},
            "subspace": {"d": 500, "kind": "dense"},
            "metrics": {"history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]},
        },
        "gap": {
            "error_gap": 0.05,
            "error_gap_stderr": 0.012,
            "loss_gap": 0.1,
            "loss_gap_stderr": 0.02,
            "train": {"error": 0.2, "error_stderr": 0.01},
            "test": {"error": 0.25, "error_stderr": 0.008},
        },
    }
    (row,) = compare.sweep_rows({"r": doc})
    assert (row["n_train"], row["epochs"], row["lr"], row["subspace"]) == (400, 3, 0.002, 500)
    assert row["gap_error_stderr"] == 0.012 and row["gap_loss_stderr"] == 0.02
    assert row["test_error_stderr"] == 0.008 and row["train_error_stderr"] == 0.01
    doc["checkpoint"]["hparams"]["epochs"] = 5  # recorded as a hyper-parameter: it wins
    del doc["checkpoint"]["subspace"]
    (row,) = compare.sweep_rows({"r": doc})
    assert row["epochs"] == 5 and row["subspace"] is None
    assert set(compare.HPARAMS) <= set(row)


def _docs(n=9):
    """n reports: 'up' grows with the gap (claims so), 'down' shrinks with it (claims the
    opposite), 'flat' is noise; the rank and the epochs vary alone."""
    rng = np.random.default_rng(3)
    docs = {}
    for i in range(n):
        gap = 0.02 * i + 0.01
        docs[f"run{i}"] = {
            "checkpoint": {
                "variant": "lora",
                "n_train": 200,
                "hparams": {"rank": 2 ** (i % 3), "chain": 1},
                "metrics": {"history": [{"epoch": e + 1} for e in range(i // 3 + 1)]},
            },
            "gap": {
                "error_gap": gap,
                "error_gap_stderr": 0.004,
                "train": {"error": 0.1},
                "test": {"error": 0.1 + gap},
            },
            "m": {"up": 1.0 + i, "down": 10.0 - i, "flat": float(rng.normal())},
        }
    return docs


def _patched_measures(monkeypatch):
    def read(key):
        return lambda d: d["m"][key]

    monkeypatch.setattr(
        compare,
        "MEASURES",
        {
            "up": compare.Measure(read("up"), "grows with the gap"),
            "down": compare.Measure(read("down"), "claims growth, shrinks"),
            "flat": compare.Measure(read("flat"), "noise measure"),
        },
    )


def test_verdicts_and_sweep_files(monkeypatch, tmp_path):
    """9 runs: 'up' tracks the gap, 'down' goes against its claim, 'flat' cannot be told
    from noise; sweep.json, sweep.md and sweep.html say so."""
    from genbound.report.sweep import FIGURE, write_sweep

    _patched_measures(monkeypatch)
    docs = _docs()
    corr = {c.measure: c for c in compare.rank_correlations(compare.sweep_rows(docs))}
    assert corr["up"].verdict == "tracks" and corr["down"].verdict == "against"
    assert corr["flat"].verdict == "undecided"
    assert corr["up"].permutation.p_value == pytest.approx(2 / math.factorial(9))
    assert corr["up"].sign_error.worst == 0.0 and corr["down"].sign_error.worst == 1.0
    out = write_sweep(tmp_path / "sweep", docs)
    saved = json.loads((out / "sweep.json").read_text())
    by = {c["measure"]: c for c in saved["correlations"]}
    assert by["up"]["permutation"]["method"] == "exact" and by["up"]["verdict"] == "tracks"
    assert by["up"]["sign_error"]["per_hparam"][0]["hparam"] in {"rank", "epochs"}
    assert saved["rows"][0]["gap_error_stderr"] == 0.004
    md = (out / "sweep.md").read_text()
    assert "| run0 | lora |" in md and "0.0100 ± 0.0040" in md
    assert "With 9 runs, |tau| must reach 0.56 to be significant at 5 %" in md
    assert "+1.000 [+1.000, +1.000], p 5.5e-6" in md
    reading = md[md.index("## Reading") :]
    assert "- 1 track the gap as they claim: grows with the gap (tau +1.000" in reading
    assert "- 1 go against their claim: claims growth, shrinks" in reading
    assert "- 1 cannot be told from noise with these runs: noise measure" in reading
    html = (out / "sweep.html").read_text()
    assert "<h2>Reading</h2>" in html and "<td>grows with the gap</td>" in html
    assert "0.0100 ± 0.0040" in html and html.count("data:image/png;base64,") == 1
    assert not re.search(r"(src|href)=[\"'](?!data:)", html) and "http" not in html
    assert (out / FIGURE).is_file()


def test_measures_vs_gap_has_error_bars_of_the_gap_stderr(monkeypatch):
    """Each panel's vertical bars span gap ± its standard error."""
    import genbound.plotting
    from genbound.report.sweep import plot_measures

    figures = []
    monkeypatch.setattr(genbound.plotting, "save_figure", lambda fig, path: figures.append(fig))
    _patched_measures(monkeypatch)
    rows = compare.sweep_rows(_docs(5))
    rows[0]["gap_error_stderr"] = 0.01
    corr = compare.rank_correlations(rows, n_boot=20)
    plot_measures(rows, corr, "unused.png")
    (fig,) = figures
    for ax in fig.axes:
        (bars,) = ax.containers
        lines = bars.lines[2][0].get_segments()
        spans = sorted(round(float(s[1, 1] - s[0, 1]), 9) for s in lines)
        assert spans == [0.008] * 4 + [0.02]
