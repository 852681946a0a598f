"""The measure registry and user measures: the docs' example run end to end, its values
checked against PEFT's merged model; mappings in sweeps; a raising measure, a data-only
measure without data, a taken name, an installed entry point and a training callback."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_texts, tiny_bert_lora, tiny_bert_with_tokenizer
from scipy.stats import kendalltau

from genbound import compare
from genbound.errors import GenboundError
from genbound.measures import Measure, measure_checkpoint, register_measure, registered
from genbound.measures.registry import compute_order, sweep_scalars
from genbound.measures.run import NO_DATA
from genbound.options import ReportOptions
from genbound.report.sweep import write_sweep
from genbound.report.writer import write_report
from genbound.tasks.hf_text import text_files

DOCS = Path(__file__).parent.parent / "docs" / "measures.md"
LABELS = ("neg", "neu", "pos")


def docs_module(tmp_path, monkeypatch, name="my_measures"):
    """The first Python block of docs/measures.md, saved as an importable module."""
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    (tmp_path / f"{name}.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def _csv(path, data):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for text, y in zip(data.texts, data.labels.tolist(), strict=True):
            w.writerow([text, LABELS[y]])
    return str(path)


@pytest.fixture
def setup(tmp_path):
    """A tiny BERT LoRA checkpoint, PEFT's merged model, the base weights and a task."""
    from transformers import BertForSequenceClassification

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, merged = tiny_bert_lora(tmp_path, base_dir, ["query", "value"], [1], n_train=None)
    base = BertForSequenceClassification.from_pretrained(base_dir).state_dict()
    train = _csv(tmp_path / "train.csv", random_texts(30, 0))
    test = _csv(tmp_path / "test.csv", random_texts(20, 1))
    task = text_files(train, test, max_length=16)
    return ckpt, merged, base, task


def _update_norms(merged, base) -> list[float]:
    """||W - W0||_F of every tensor PEFT's merge changed, in float64 (the oracle)."""
    state = merged.state_dict()
    norms = [float((state[k].double() - v.double()).norm()) for k, v in base.items() if k in state]
    return [x for x in norms if x > 0]


# -- the registry --------------------------------------------------------------------------


def test_registry_order_scalars_and_dependencies():
    names = [m.name for m in registered()]
    own = [
        "size",
        "mi",
        "compression",
        "token_bound",
        "pacbayes",
        "theorem1",
        "spectra",
        "curvature",
        "landscape",
        "distance",
        "hessian_distance",
        "sharpness",
        "gap",
    ]
    assert names == own
    assert list(compare.MEASURES) == [n for n, _ in sweep_scalars()]
    order = [m.name for m in compute_order(list(registered()))]
    assert order.index("spectra") < order.index("theorem1")
    assert order.index("gap") < order.index("mi")
    with pytest.raises(GenboundError, match="already registered"):
        register_measure(registered()[1])

    class Loop(Measure):
        name, after = "a", ("b",)

    class Back(Measure):
        name, after = "b", ("a",)

    with pytest.raises(GenboundError, match="cycle"):
        compute_order([Loop(), Back()])


def test_every_scalar_reads_what_its_measure_writes(setup, tmp_path):
    """Each registered sweep scalar, read from a report written with data, is the number
    the measure's own result holds (the JSON and the reader agree)."""
    ckpt, _, _, task = setup
    opts = ReportOptions(
        curvature_examples=8, trace_products=3, density_probes=1, density_steps=3,
        landscape_steps=5,
    )  # fmt: skip
    m = measure_checkpoint(ckpt, task=task, options=opts, n_train=30)
    doc = json.loads((write_report(ckpt, tmp_path / "rep", m) / "report.json").read_text())
    got = {n: s.read(doc) for n, s in sweep_scalars()}
    assert got["num_trainable"] == ckpt.num_trainable
    assert got["mi_bound"] == m.mi.bound and got["occam_bound"] == m.mi.occam_bound
    assert got["compression_bound"] == m.compression.bound
    assert got["compression_bits"] == m.compression.code_bits
    assert got["log10_phi_dW"] == m.theorem1.log10_phi_dW
    fro = [x.frobenius_norm for x in m.spectra.layers]
    assert got["sum_dW_frobenius"] == pytest.approx(sum(fro), rel=1e-12)
    assert got["hessian_top_eigenvalue"] == float(m.curvature.top.eigenvalues[0])
    assert got["path_curvature"] == m.landscapes["path"].curvature[0]
    assert got["pacbayes_bound"] == m.results["pacbayes"].bound
    dist, hd = m.results["distance"], m.results["hessian_distance"]
    assert got["dist_trained"] == dist.trained and got["dist_merged"] == dist.merged
    assert got["hessian_distance"] == hd.distance
    assert got["hessian_distance_bound"] == hd.bound == hd.distance / np.sqrt(30)
    flat = m.results["sharpness"].spaces["merged"]
    for name, kind, value in [
        ("pacbayes_flatness", "gaussian", None),
        ("pacbayes_mag_flatness", "gaussian_magnitude", None),
        ("sharpness_flatness", "adversarial", None),
        ("sharpness_mag_flatness", "adversarial_magnitude", None),
        ("pacbayes_init", "gaussian", flat.pacbayes_normalised),
        ("pacbayes_mag_init", "gaussian_magnitude", flat.pacbayes_magnitude_normalised),
    ]:  # unconverged searches read as missing
        found = flat.searches[kind]
        want = (found.inverse_square if value is None else value) if found.converged else None
        assert got[name] == want, name
    assert doc["measures"] == {} and set(doc["bounds"]) == {
        "mi",
        "theorem1",
        "compression",
        "token_level",
        "pacbayes",
    }
    # a classifier has no token-level bound: the key is there, empty, and reads as missing
    assert doc["bounds"]["token_level"] is None
    assert "token_bound" not in m.skipped and "token_bound" not in m.results
    assert got["token_bound_bits"] is None and got["document_bound_bits"] is None


# -- user measures -------------------------------------------------------------------------


def test_docs_example_lands_in_report_json_and_md(setup, tmp_path, monkeypatch):
    ckpt, merged, base, _ = setup
    mod = docs_module(tmp_path, monkeypatch)
    opts = ReportOptions(
        parts=("spectra",), measures=(f"{mod}:update_norm", f"{mod}:update_shape")
    )  # --only spectra does not remove user measures
    m = measure_checkpoint(ckpt, options=opts)
    out = write_report(ckpt, tmp_path / "rep", m)
    doc = json.loads((out / "report.json").read_text())
    norms = _update_norms(merged, base)
    assert len(norms) == len(ckpt.updates)
    assert doc["measures"]["update_norm"] == pytest.approx(sum(norms), rel=1e-5)
    shape = doc["measures"]["update_shape"]
    assert shape["largest"] == pytest.approx(max(norms), rel=1e-5)
    assert shape["smallest"] == pytest.approx(min(norms), rel=1e-5)
    assert doc["settings"]["measures"] == list(opts.measures)
    md = (out / "report.md").read_text()
    assert "## Your measures" in md and "`update_shape.largest`" in md
    assert "sum over updates of \\|\\|dW\\|\\|_F" in md  # the docstring, its pipes escaped
    page = (out / "report.html").read_text()  # one cell, not split at the pipes
    assert "<td>sum over updates of ||dW||_F</td>" in page


def test_raising_and_malformed_measures_are_skipped_the_rest_is_kept(setup, tmp_path, monkeypatch):
    ckpt, *_ = setup
    (tmp_path / "bad_measures.py").write_text(
        "def boom(checkpoint):\n    raise ValueError('no luck')\n\n"
        "def words(checkpoint):\n    return 'three'\n\n"
        "def mi_bound(checkpoint):\n    return 1.0\n\n"
        "def fine(checkpoint):\n    return 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = ("boom", "words", "mi_bound", "fine", "missing")
    m = measure_checkpoint(
        ckpt,
        parts=("spectra", "mi"),
        n_train=10,
        measures=tuple(f"bad_measures:{s}" for s in specs),
    )
    assert m.skipped["boom"] == "raised ValueError: no luck"
    assert "expected a number or a mapping" in m.skipped["words"]
    assert "already taken" in m.skipped["bad_measures:mi_bound"]
    assert "has no attribute 'missing'" in m.skipped["bad_measures:missing"]
    assert m.results == {"fine": 2.0}
    assert m.spectra is not None and m.mi is not None  # the rest of the report is intact
    doc = json.loads((write_report(ckpt, tmp_path / "r", m) / "report.json").read_text())
    assert doc["measures"] == {"fine": 2.0} and doc["skipped"]["boom"].startswith("raised")


def test_a_task_measure_needs_data(setup, tmp_path, monkeypatch):
    ckpt, _, _, task = setup
    (tmp_path / "task_measures.py").write_text(
        "def train_size(checkpoint, task):\n    return task.n_train\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ("task_measures:train_size",)
    assert measure_checkpoint(ckpt, parts=(), measures=spec).skipped["train_size"] == NO_DATA
    assert measure_checkpoint(ckpt, task=task, parts=(), measures=spec).results["train_size"] == 30


def test_installed_entry_point_is_computed_in_every_report(setup, tmp_path, monkeypatch):
    ckpt, *_ = setup
    (tmp_path / "gbplugin.py").write_text(
        "def plugin_updates(checkpoint):\n    return len(checkpoint.updates)\n"
    )
    info = tmp_path / "gbplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gbplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[genbound.measures]\nplugin_updates = gbplugin:plugin_updates\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = measure_checkpoint(ckpt, parts=())
    assert m.results["plugin_updates"] == len(ckpt.updates)
    assert m.settings["measures"] == ["gbplugin:plugin_updates"]


def test_user_measures_in_sweep_rows_and_correlations(tmp_path):
    """A mapping measure becomes ``name.key`` columns, ranked like genbound's own: tau as
    scipy computes it."""
    gaps = [0.10, 0.30, 0.20, 0.40]
    norms = [1.0, 3.0, 2.5, 2.0]
    docs = {
        f"r{i}": {
            "checkpoint": {"variant": "lora", "hparams": {"rank": i + 1}},
            "gap": {"error_gap": g},
            "measures": {"shape": {"largest": x, "smallest": 1.0}, "count": float(i)},
        }
        for i, (g, x) in enumerate(zip(gaps, norms, strict=True))
    }
    rows = compare.sweep_rows(docs)
    assert rows[1]["shape.largest"] == 3.0 and rows[1]["user_measures"] == [
        "shape.largest",
        "shape.smallest",
        "count",
    ]
    corr = {c.measure: c for c in compare.rank_correlations(rows, n_boot=50)}
    assert corr["shape.largest"].tau == pytest.approx(kendalltau(norms, gaps).statistic)
    assert corr["count"].tau == pytest.approx(kendalltau(range(4), gaps).statistic)
    assert not corr["shape.smallest"].informative  # the same value in every run
    assert corr["shape.largest"].expected_sign is None  # a user measure claims no direction
    own = {c.measure: c for c in compare.rank_correlations(rows, measures=["num_trainable"])}
    assert own["num_trainable"].expected_sign == 1
    out = write_sweep(tmp_path / "sweep", docs)
    sweep = json.loads((out / "sweep.json").read_text())
    assert {"shape.largest", "count"} <= {c["measure"] for c in sweep["correlations"]}
    md = (out / "sweep.md").read_text()
    assert "## Your measures" in md and "| shape.largest |" in md
    # every row of the ranking has its six cells, whatever pipes a description holds
    from genbound.report.html import _cells

    table = md[md.index("| rank | measure") :].split("\n\n")[0].splitlines()
    assert len(table) > 2 and all(len(_cells(line)) == 6 for line in table)


def test_tracker_logs_user_measures(tmp_path):
    from conftest import tiny_bert
    from transformers import BertForSequenceClassification

    from genbound.adapters import apply
    from genbound.callbacks import BoundTracker, live_checkpoint

    tiny_bert().save_pretrained(tmp_path / "base")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    handle = apply(model, "lora", rank=2, alpha=4, targets=["query", "value"], seed=0)
    with torch.no_grad():
        for p in handle.model.parameters():
            if p.requires_grad:
                p.add_(0.1)

    def update_count(checkpoint):
        return len(checkpoint.updates)

    def broken(checkpoint):
        raise RuntimeError("x")

    tracker = BoundTracker(every_n_steps=1, base=tmp_path / "base", measures=[update_count, broken])
    record = tracker.measure(handle, 1)
    with live_checkpoint(handle, base=tmp_path / "base") as ckpt:
        expected = len(ckpt.updates)
    assert record.values["genbound/update_count"] == expected
    assert record.skipped["broken"] == "raised RuntimeError: x"
    assert "genbound/effective_rank/mean" in record.values  # the rest is still logged
    with pytest.raises(GenboundError, match="MODULE:ATTR"):
        BoundTracker(measures=["not a name"])


def test_report_options_name_the_bad_option():
    with pytest.raises(GenboundError, match="'trace_products'"):
        ReportOptions(trace_products=0)
    with pytest.raises(GenboundError, match=r"job \[x\]: unknown option\(s\) \['sed'\]"):
        ReportOptions.from_json({"sed": 1}, where="job [x]")
    opts = ReportOptions(measures=("a.b:c",), parts=("mi", "gap"))
    assert ReportOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts
    assert np.array_equal(opts.parts, ("gap", "mi"))


# -- a task that is not classification ------------------------------------------------------

from test_regression_task import CLIP, trained  # noqa: E402,F401  (the fixture, reused)


def test_regression_report_states_its_own_loss(trained, tmp_path):  # noqa: F811
    """A regression task's report: the MI bound on its clipped squared error (closed form),
    the compression bound's range and chance level from its metric, its names in report.md,
    and curvature and landscapes on a uniform sample."""
    ckpt, task, _, _ = trained
    opts = ReportOptions(
        curvature_examples=12, trace_products=3, density_probes=1, density_steps=3,
        landscape_steps=5,
    )  # fmt: skip
    m = measure_checkpoint(ckpt, task=task, options=opts)
    assert not m.skipped, m.skipped
    out = write_report(ckpt, tmp_path / "rep", m)
    doc = json.loads((out / "report.json").read_text())
    mi = doc["bounds"]["mi"]
    assert mi["loss"]["kind"] == "bounded" and mi["loss"]["loss_range"] == CLIP
    d, q, n = mi["d_actual"], ckpt.bits_per_param, ckpt.n_train
    sigma = CLIP / 2
    assert mi["bound"] == pytest.approx(np.sqrt(2 * sigma**2 * q * np.log(2) * d / n), rel=1e-12)
    comp = doc["bounds"]["compression"]
    assert comp["error_range"] == CLIP and comp["chance"] == pytest.approx(task.metric.chance)
    assert comp["vacuous_at"] == pytest.approx(task.metric.chance)
    assert doc["data"]["num_labels"] is None
    assert doc["curvature"]["sample"]["stratified_by"] is None
    md = (out / "report.md").read_text()
    name = task.metric.error_name
    assert f"| {name} |" in md and f"The measured gap in {name}" in md
    assert f"the test {name} of the quantized model" in md
    assert "0-1" not in md.split("## Bounds")[0]  # nothing classification-only above
