"""What reports and run manifests say in words and numbers: bounds near 1 printed as such,
the intruder reading for dense and adapter updates, a zero Theorem 1 term explained,
strict JSON, the head run's targets and the metrics fit records."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace as NS

import pytest
import torch
from test_adapters import MLP

import genbound.adapters as ga
from genbound.bounds import theorem1
from genbound.report.markdown import bounds_markdown, compression_markdown
from genbound.report.measures import Measures
from genbound.report.reading import intruder_sentence, reading_lines
from genbound.report.serialize import dumps_json
from genbound.train import evaluate, fit


def _layers(counts, kind):
    """Layers whose intruder count at eps 0.5 is each of ``counts``."""
    return [
        NS(
            name=f"encoder.layer.{i}.attention.self.query",
            kind=kind,
            intruders=NS(k=10, eps=[0.5], count_at=lambda eps, c=c: c),
        )
        for i, c in enumerate(counts)
    ]


def test_intruder_reading_for_dense_updates_without_intruders():
    """Full fine-tuning, no intruders: no "adapted layers", no claim that directions were
    added."""
    text = intruder_sentence(_layers([0] * 12, "dense"))
    assert text.startswith("None of the 12 updated layers has intruder dimensions")
    assert "adapted" not in text and "added directions" not in text
    assert "re-weights existing directions" in text


def test_intruder_reading_counts_the_layers_with_intruders():
    some = intruder_sentence(_layers([0, 2, 0, 1], "lowrank"))
    assert some.startswith("2 of 4 adapted layers have intruder dimensions")
    assert "in those layers the update added directions" in some
    assert intruder_sentence(_layers([3], "lowrank")).startswith("The adapted layer has")
    assert intruder_sentence(_layers([0], "dense")).startswith("The updated layer has no")


def _compression(bound):
    cand = NS(bits=1, code_bits=1193, evaluated=True, train_error=0.3875, bound=bound,
              rhs=5.22, floor=0.9946)  # fmt: skip
    return NS(vacuous=True, delta=0.05, n_train=160, bound=bound, vacuous_at=2 / 3,
              chosen_bits=1, code_bits=1193, train_error=0.3875, rhs=5.22,
              candidates=[cand])  # fmt: skip


def test_a_bound_just_below_one_is_not_printed_as_one():
    """0.9999999978 in report.md and the reading: 1 - 2.2e-9, never 1.0000."""
    m = Measures(spectra=None, compression=_compression(0.9999999978))
    text = "\n".join(compression_markdown(m) + reading_lines(m))
    assert "**1 - 2.2e-9**" in text and "The compression bound (1 - 2.2e-9) is vacuous" in text
    assert "1.0000" not in text.replace("0.9946", "")


def test_zero_theorem1_term_is_explained():
    """A new head alone (W0 = 0): Phi_W0 = 0, log10 = -inf, and report.md says why."""
    t = theorem1([0.0], [0.45], layer_names=["classifier"])
    assert t.log10_phi_W0 == -math.inf and math.isfinite(t.log10_phi_dW)
    lines = bounds_markdown(Measures(spectra=None, theorem1=t))
    assert any("log10 Phi_W0 = -inf" in line for line in lines)
    (note,) = [line for line in lines if "Phi_W0 = 0 exactly" in line]
    assert "`classifier`" in note and "W0 = 0" in note and "G(dW) + Phi_W0" in note
    both = theorem1([0.0, 1.0], [0.0, 0.0])
    notes = [
        line for line in bounds_markdown(Measures(spectra=None, theorem1=both)) if "-inf" in line
    ]
    assert any("dW = 0 in every layer" in line for line in notes)


def test_json_documents_have_no_bare_non_finite_numbers():
    doc = {"a": math.nan, "b": [1.0, -math.inf], "c": {"d": math.inf}, "n": 3, "t": torch.ones(2)}
    text = dumps_json(doc)

    def strict(name):
        raise ValueError(f"bare {name} in JSON")

    assert json.loads(text, parse_constant=strict) == {
        "a": "nan",
        "b": [1.0, "-inf"],
        "c": {"d": "inf"},
        "n": 3,
        "t": [1.0, 1.0],
    }


def test_head_run_lists_only_the_head_as_target():
    handle = ga.apply(MLP(), "head", targets=[".*fc1.*"], head=["classifier"])
    assert handle.hparams["targets"] == ["classifier"]
    assert ga.apply(MLP(), "lora", rank=2, targets=["fc1"]).hparams["targets"] == ["fc1"]


def test_fit_metrics_hold_what_was_measured():
    """Without evaluation, no null metrics; the last epoch's running loss and error equal
    the model's own loss and error before its single step (one batch, no dropout)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 32, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    handle = ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0)
    before = copy.deepcopy(handle.model)
    res = fit(handle, (x, y), None, epochs=1, lr=1e-2, batch_size=60, eval_train=False)
    metrics = res.metrics()
    assert all(v is not None for v in metrics.values())
    assert "train_loss" not in metrics and "test_loss" not in metrics
    loss, acc = evaluate(before, (x, y))
    assert metrics["last_epoch_mean_train_loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["last_epoch_train_error"] == pytest.approx(1 - acc, abs=1e-12)
    evaluated = fit(handle, (x, y), (x, y), epochs=1, lr=1e-2, batch_size=60).metrics()
    after = evaluate(handle.model, (x, y))
    assert evaluated["train_loss"] == pytest.approx(after[0]) == evaluated["test_loss"]
    assert evaluated["train_error"] == pytest.approx(1 - after[1])
