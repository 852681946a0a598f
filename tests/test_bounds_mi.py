"""MI bound from a checkpoint and the bound table, against hand formulas."""

from __future__ import annotations

import math

import pytest
import torch

from genbound.bounds import PAPER_VARIANTS, bound_table, loss_spec, mi_bound
from genbound.checkpoint import (
    Checkpoint,
    DenseUpdate,
    DoraUpdate,
    Hyperparams,
    LowRankUpdate,
    SelectorUpdate,
)
from genbound.errors import GenboundError


def _lora(name, n, m, r, trained=("A", "B")):
    return LowRankUpdate(
        name=name,
        param=f"{name}.weight",
        shape=(n, m),
        B=torch.zeros(n, r),
        A=torch.zeros(r, m),
        scale=1.0,
        trained=trained,
    )


def _ckpt(updates, variant="lora", *, n_train=None, dtype=torch.float32, metrics=None, chain=1):
    return Checkpoint(
        path="mem",
        format="genbound",
        variant=variant,
        hparams=Hyperparams(rank=16, chain=chain),
        updates={u.name: u for u in updates},
        dtype=dtype,
        n_train=n_train,
        metrics=metrics or {},
    )


def _roberta_lora():
    return [
        _lora(f"roberta.encoder.layer.{i}.attention.self.{m}", 768, 768, 16)
        for i in range(12)
        for m in ("query", "value")
    ]


def test_theory_worked_example_roberta_lora():
    res = mi_bound(_ckpt(_roberta_lora(), n_train=3668))
    assert res.d_actual == res.d_formula == 12 * 2 * 16 * (768 + 768) == 589_824
    assert res.q == 32 and res.n_train == 3668 and res.loss.sigma == 0.5
    expected = math.sqrt(2 * 0.25 * 32 * math.log(2) * 589_824 / 3668)
    assert res.bound == pytest.approx(expected, rel=1e-15)
    assert round(res.bound) == 42
    assert res.vacuous and res.bound > 1  # reported, never clipped
    assert any("vacuous" in w for w in res.warnings)
    occam = 1.0 * math.sqrt((32 * 589_824 * math.log(2) + math.log(1 / 0.05)) / (2 * 3668))
    assert res.occam_bound == pytest.approx(occam, rel=1e-15) and res.occam_vacuous
    assert "equals" in res.difference_note
    assert len(res.layers) == 24 and all(lc.d_actual == 16 * 1536 for lc in res.layers)
    assert res.assumptions


def test_head_and_saved_modules_are_counted():
    head = torch.zeros(2, 768)
    ups = [
        *_roberta_lora(),
        DenseUpdate(
            name="classifier.out_proj.weight",
            param="classifier.out_proj.weight",
            shape=(2, 768),
            value=lambda: head,
            new=True,
        ),
        DenseUpdate(
            name="classifier.out_proj.bias",
            param="classifier.out_proj.bias",
            shape=(2,),
            value=lambda: torch.zeros(2),
            new=True,
        ),
    ]
    ckpt = _ckpt(ups, n_train=100)
    res = mi_bound(ckpt)
    assert res.d_actual == 589_824 + 1536 + 2 == ckpt.num_trainable
    assert res.d_formula == ckpt.num_trainable_by_formula() == res.d_actual
    assert [lc.by_formula for lc in res.layers[-2:]] == [False, False]


def test_formula_difference_is_reported():
    # variant says Asym (only B trains: r n) but the stored update trained A and B.
    ups = [_lora("l.0.q", 64, 32, 4), _lora("l.1.q", 64, 32, 4, trained=("B",))]
    ckpt = _ckpt(ups, variant="asym", n_train=50)
    res = mi_bound(ckpt)
    assert res.d_actual == 4 * (64 + 32) + 4 * 64 == ckpt.num_trainable
    assert res.d_formula == 2 * 4 * 64 == ckpt.num_trainable_by_formula()
    assert res.d_difference == 4 * 32
    assert "differs" in res.difference_note and "l.0.q" in res.difference_note
    assert "l.1.q" not in res.difference_note
    assert res.bound_formula == pytest.approx(
        math.sqrt(2 * 0.25 * 32 * math.log(2) * res.d_formula / 50), rel=1e-15
    )


def test_other_update_kinds():
    sel = SelectorUpdate(
        name="l.0.v",
        param="l.0.v.weight",
        shape=(10, 8),
        B=torch.zeros(10, 3),
        indices=torch.tensor([0, 1, 2]),
    )
    dora = DoraUpdate(
        name="l.1.v",
        param="l.1.v.weight",
        shape=(10, 8),
        lowrank=_lora("l.1.v", 10, 8, 3),
        magnitude=torch.ones(10),
    )
    res = mi_bound(_ckpt([sel], variant="cla", n_train=10))
    assert res.d_actual == res.d_formula == 30
    res = mi_bound(_ckpt([dora], variant="dora", n_train=10))
    assert res.d_actual == res.d_formula == 3 * 18 + 10


def test_n_train_missing_is_an_error_and_given_overrides():
    ckpt = _ckpt(_roberta_lora()[:2])
    with pytest.raises(GenboundError, match="number of training examples"):
        mi_bound(ckpt)
    res = mi_bound(ckpt, n_train=10)
    assert res.n_train == 10 and res.n_train_source == "given"
    res = mi_bound(_ckpt(_roberta_lora()[:2], n_train=7), n_train=None)
    assert res.n_train == 7 and res.n_train_source == "checkpoint"
    with pytest.raises(GenboundError):
        mi_bound(ckpt, n_train=0)


def test_q_from_dtype_unless_given():
    ups = _roberta_lora()[:1]
    assert mi_bound(_ckpt(ups, n_train=5, dtype=torch.bfloat16)).q == 16
    res = mi_bound(_ckpt(ups, n_train=5), bits=8)
    assert res.q == 8 and res.q_source == "given"


def test_losses():
    with pytest.raises(GenboundError, match="loss_range"):
        loss_spec("clipped_ce")
    with pytest.raises(GenboundError, match="smoothing"):
        loss_spec("smoothed_ce", smoothing=0.1)
    with pytest.raises(GenboundError, match="unknown loss"):
        loss_spec("hinge")
    assert loss_spec("clipped_ce", loss_range=4.0).sigma == 2.0
    # smoothed CE: NLL of p' = (1 - a) p + a / K ranges from -ln(1 - a + a/K) to -ln(a/K).
    a, k = 0.1, 5
    spec = loss_spec("smoothed_ce", smoothing=a, num_classes=k)
    width = -math.log(a / k) - (-math.log(1 - a + a / k))
    assert spec.loss_range == pytest.approx(width, rel=1e-14)
    assert spec.sigma == spec.loss_range / 2
    res = mi_bound(
        _ckpt(_roberta_lora()[:1], n_train=5), loss="smoothed_ce", smoothing=a, num_classes=k
    )
    assert "smoothed" in res.loss.description
    assert any("smoothed predictor" in s for s in res.assumptions)


def test_observed_losses_outside_the_range_warn():
    ckpt = _ckpt(_roberta_lora()[:1], n_train=10**9, metrics={"train_loss": 3.2, "eval_loss": 0.4})
    res = mi_bound(ckpt, loss="clipped_ce", loss_range=2.0)
    assert not res.vacuous
    assert len(res.warnings) == 1 and "train_loss" in res.warnings[0]
    res = mi_bound(ckpt, loss="zero_one", observed_losses=[0.1, 1.5])
    assert len(res.warnings) == 1 and "1.5" in res.warnings[0]


# -- the table ----------------------------------------------------------------------------

THEORY_D = {  # shared/THEORY.md section 1, per adapted n x m layer
    "lora": lambda n, m, r, k: r * (m + n),
    "lora_plus": lambda n, m, r, k: r * (m + n),
    "asym": lambda n, m, r, k: r * n,
    "cola": lambda n, m, r, k: min(k * r * (m + n), m * n),
    "rac": lambda n, m, r, k: min(k * r * n, m * n),
    "cla": lambda n, m, r, k: r * n,
    "paca": lambda n, m, r, k: r * n,
    "c3la": lambda n, m, r, k: n * min(k * r, m),
    "fft": lambda n, m, r, k: n * m,
    "random_cla": lambda n, m, r, k: r * n,
    "random_c3la": lambda n, m, r, k: n * min(k * r, m),
    "dora": lambda n, m, r, k: r * (m + n) + n,
    "vera": lambda n, m, r, k: n + r,
    "head": lambda n, m, r, k: 0,
}


@pytest.mark.parametrize("r,k", [(8, 3), (300, 4)])
def test_bound_table_against_theory(r, k):
    shapes = [(768, 768), (3072, 768), (768, 3072), (768, 768)]
    t = bound_table(shapes, r, k, 16, 0.5, 2000, head_params=1538)
    assert [row.variant for row in t.rows[: len(PAPER_VARIANTS)]] == list(PAPER_VARIANTS)
    assert {row.variant for row in t.rows} == set(THEORY_D)
    for row in t.rows:
        d = sum(THEORY_D[row.variant](n, m, r, k) for n, m in shapes)
        assert row.d_layers == d and row.d_total == d + 1538
        expected = math.sqrt(2 * 0.25 * 16 * math.log(2) * (d + 1538) / 2000)
        assert row.bound == pytest.approx(expected, rel=1e-15)
        assert row.vacuous == (expected > 1.0)
    md = t.to_markdown()
    assert md.count("\n| ") == len(t.rows) + 1 and "c3LA" in md and "VeRA" in md


def test_bound_table_reproduces_worked_example():
    t = bound_table([(768, 768)] * 24, 16, 1, 32, 0.5, 3668, variants=["lora"])
    assert len(t.rows) == 1 and round(t.row("lora").bound) == 42
    assert t.row("lora").d_total == 589_824
    with pytest.raises(GenboundError):
        t.row("cla")
    with pytest.raises(GenboundError, match="unknown adapter variant"):
        bound_table([(4, 4)], 1, 1, 32, 0.5, 10, variants=["nope"])
