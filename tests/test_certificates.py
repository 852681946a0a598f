"""The sweep's certificates: the union-bounded compression bound recomputed by hand with
brentq, full-adapter matching, and the section in sweep.md / sweep.json."""

from __future__ import annotations

import json
import math

import pytest
from helpers import np_kl_inverse

from genbound.report.certificates import certificate_rows, union_bounded
from genbound.report.sweep import write_sweep


def compression(cands, n=6000, bound=None):
    return {
        "bound": bound if bound is not None else min(c[2] for c in cands if c[2] is not None),
        "n_train": n,
        "error_range": 1.0,
        "vacuous_at": 2 / 3,
        "candidates": [
            {"bits": b, "train_error": e, "rhs_nats": rhs, "bound": bd, "evaluated": bd is not None}
            for b, e, rhs, bd in cands
        ],
    }


def doc(variant, test, comp=None, subspace=None, rank=8, pacbayes=None):
    bounds = {"compression": comp} if comp else {}
    if pacbayes is not None:
        bounds["pacbayes"] = {"bound": pacbayes, "vacuous_at": 2 / 3}
    return {
        "checkpoint": {
            "variant": variant,
            "hparams": {"rank": rank, "chain": 1, "targets": ["x"]},
            "subspace": {"d": subspace} if subspace else None,
        },
        "gap": {"test": {"error": test}, "train": {"error": test - 0.03}},
        "bounds": bounds,
    }


def test_union_bound_by_hand():
    c = compression([(1, 0.40, 0.070, 0.6), (2, 0.30, 0.125, 0.55), (3, None, 0.2, None)])
    c["candidates"][2]["train_error"] = None
    for m in (1, 2, 9, 1000):
        want = min(np_kl_inverse(0.40, 0.070 + math.log(m) / 6000),
                   np_kl_inverse(0.30, 0.125 + math.log(m) / 6000))  # fmt: skip
        assert union_bounded(c, m) == pytest.approx(want, rel=1e-9)
    assert union_bounded(c, 1) <= union_bounded(c, 9) <= union_bounded(c, 1000)


def test_rows_match_subspace_runs_to_the_full_adapter(tmp_path):
    docs = {
        "lora": doc("lora", 0.29, compression([(1, 0.9, 50.0, 0.99999)])),
        "lora_s": doc("lora", 0.34, compression([(2, 0.30, 0.12, 0.55)]), subspace=500),
        "asym_s": doc("asym", 0.36, compression([(1, 0.35, 0.07, 0.56)]), subspace=500),
        "lora_r4_s": doc("lora", 0.35, compression([(1, 0.35, 0.07, 0.56)]), 300, rank=4),
        "head": doc("head", 0.37, pacbayes=0.7),
    }
    rows = {r["run"]: r for r in certificate_rows(docs)}
    assert set(rows) == set(docs)
    assert rows["lora_s"]["full_test_error"] == 0.29 and rows["lora_s"]["subspace_d"] == 500
    assert rows["asym_s"]["full_test_error"] is None  # no full asym run
    assert rows["lora_r4_s"]["full_test_error"] is None  # another rank
    assert rows["lora"]["full_test_error"] is None  # not a subspace run
    assert all(r["num_configs"] == 4 for r in rows.values())  # 4 with a compression bound
    assert rows["head"]["compression_bound"] is None and rows["head"]["pacbayes_bound"] == 0.7
    assert rows["lora_s"]["union_bound"] == pytest.approx(
        np_kl_inverse(0.30, 0.12 + math.log(4) / 6000), rel=1e-9
    )
    out = write_sweep(tmp_path / "sweep", docs)
    md = (out / "sweep.md").read_text()
    assert "## Certificates" in md and "union-bounded (M = 4)" in md
    assert "| lora_s | 500 | 0.3400 |" in md
    saved = json.loads((out / "sweep.json").read_text())["certificates"]
    assert [r["run"] for r in saved] == list(docs)
