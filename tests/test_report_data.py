"""``genbound report`` with data: ``--data`` files, ``--task`` functions and a run folder's own
task reference; the gap and the compression bound checked by hand from the written files."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import random_texts, tiny_bert_lora, tiny_bert_with_tokenizer
from safetensors.torch import load_file
from scipy.integrate import trapezoid
from scipy.optimize import brentq

from genbound.bounds import binary_kl
from genbound.bounds.compression import with_trainable_tensors
from genbound.cli.main import main
from genbound.tasks.hf_text import TextClassificationTask, text_files
from genbound.tasks.reference import TaskReference, load_task

LABELS = ("neg", "neu", "pos")


def _write_csv(path, data):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["tweet", "sentiment"])
        for text, y in zip(data.texts, data.labels.tolist(), strict=True):
            w.writerow([text, LABELS[y]])
    return path


def _hand_eval(model, base_dir, data):
    """Per-example (cross-entropy, 0-1 error) of a full model, one text at a time."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    losses, errors = [], []
    with torch.no_grad():
        for text, y in zip(data.texts, data.labels, strict=True):
            logits = model(**tok(text, return_tensors="pt")).logits[0].double()
            losses.append(float(torch.nn.functional.cross_entropy(logits[None], y[None])))
            errors.append(float(logits.argmax() != y))
    return np.array(losses), np.array(errors)


@pytest.fixture
def setup(tmp_path):
    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, merged = tiny_bert_lora(tmp_path, base_dir, ["query", "value"], [1], n_train=None)
    train, test = random_texts(40, 0), random_texts(25, 1)
    paths = _write_csv(tmp_path / "train.csv", train), _write_csv(tmp_path / "test.csv", test)
    return base_dir, ckpt, merged, train, test, paths


def test_report_with_data_files_checked_by_hand(tmp_path, setup, capsys):
    base_dir, ckpt, merged, train, test, (train_csv, test_csv) = setup
    out = tmp_path / "rep"
    args = ["report", str(ckpt.path), "--out", str(out), "--data", str(train_csv), str(test_csv)]
    args += ["--text-column", "tweet", "--label-column", "sentiment"]
    assert main(args) == 0
    doc = json.loads((out / "report.json").read_text())

    # the task is recorded so the report can be reproduced
    ref = doc["data"]["reference"]
    assert ref["task"] == "genbound.tasks.text_data:text_data"
    assert ref["kwargs"]["train"] == str(train_csv.resolve())
    assert ref["kwargs"]["objective"] == "auto"  # resolved per checkpoint: a classifier here
    assert doc["data"]["n_train"] == 40 and doc["data"]["n_train_source"] == "task's training set"

    # the gap against PEFT's merged model, text by text
    (ltr, etr), (lte, ete) = _hand_eval(merged, base_dir, train), _hand_eval(merged, base_dir, test)
    gap = doc["gap"]
    assert gap["train"]["n"] == 40 and gap["test"]["n"] == 25
    assert gap["loss_gap"] == pytest.approx(lte.mean() - ltr.mean(), rel=1e-4, abs=1e-6)
    assert gap["error_gap"] == pytest.approx(ete.mean() - etr.mean(), abs=1e-12)
    assert gap["test"]["error"] == pytest.approx(ete.mean(), abs=1e-12)

    # the MI bound uses N from the task
    mi = doc["bounds"]["mi"]
    assert mi["n_train"] == 40
    assert mi["bound"] == pytest.approx(
        math.sqrt(2 * 0.25 * mi["q"] * math.log(2) * mi["d_actual"] / 40), rel=1e-12
    )

    # the compression bound from the written quantized tensors, recomputed by hand
    comp = doc["bounds"]["compression"]
    quantized = load_file(str(out / comp["quantized_tensors"]))
    chosen = next(c for c in comp["candidates"] if c["bits"] == comp["chosen_bits"])
    levels = set(np.concatenate([np.asarray(cb) for cb in chosen["codebooks"]]).tolist())
    assert all(set(v.double().unique().tolist()) <= levels for v in quantized.values())
    task = TextClassificationTask(train, test, base_path=base_dir)
    model = task.build_model(with_trainable_tensors(ckpt, quantized))
    _, q_err = _hand_eval(model, base_dir, train)
    assert comp["train_error"] == pytest.approx(q_err.mean(), abs=1e-12)
    k_bits = sum(p["codebook_bits"] + p["index_bits"] for p in chosen["parts"])
    assert comp["code_bits"] == k_bits
    n, delta, m = 40, comp["delta"], comp["num_candidates"]
    rhs = (k_bits * math.log(2) + math.log(2 * math.sqrt(n) / delta) + math.log(m)) / n
    assert comp["rhs_nats"] == pytest.approx(rhs, rel=1e-12)
    ref_bound = brentq(
        lambda p: binary_kl(q_err.mean(), p) - rhs, q_err.mean(), 1 - 1e-15, xtol=1e-14
    )
    assert comp["bound"] == pytest.approx(ref_bound, abs=1e-9)
    assert comp["vacuous"] == (comp["bound"] >= 2 / 3)  # 3 classes: chance is 2/3
    md = (out / "report.md").read_text()
    assert "## Empirical gap" in md and "## Compression bound" in md
    assert f"{comp['bound']:.4f}" in md
    assert "## What the numbers say" in md and "MI bound" in md
    # one self-contained HTML file: every figure the Markdown links is embedded
    page = (out / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert len(figures) >= 4 and all((out / f).exists() for f in figures)
    assert page.count("data:image/png;base64,") == len(figures)
    assert 'src="figures' not in page and page.count("<table>") == md.count("\n|---")

    # curvature: the top eigenvalue of the Hessian of the mean train loss (40 examples, fewer
    # than the subset size) with respect to the updated tensors of PEFT's merged model,
    # restricted to what LoRA reaches (dW = s (dB A + B dA), the head in full), by scipy's
    # ARPACK on plain double-backward products projected with bases of col(B) and row(A)
    curv = doc["curvature"]
    assert curv["examples"] == 40 and curv["top"]["converged"]
    assert "directions its adapter reaches" in curv["top"]["parameterization"]
    ref = _top_hessian_eigenvalue(merged, base_dir, train, ckpt, tangent=True)
    assert curv["top_eigenvalue"] == pytest.approx(ref, rel=5e-3)
    assert curv["trace"]["stderr"] > 0
    dens = curv["density"]
    assert trapezoid(dens["density"], dens["grid"]) == pytest.approx(1.0, abs=1e-3)
    nodes = np.array(dens["nodes"], dtype=float)
    assert np.nanmax(nodes) <= ref * (1 + 1e-5)  # Ritz values lie inside the spectrum
    # landscapes: the centre is the checkpoint's train loss on the same examples
    for kind in ("random-filter", "path"):
        ls = doc["landscapes"][kind]
        assert ls["centre_loss"] == pytest.approx(ltr.mean(), rel=1e-5)
        assert (out / ls["file"]).exists() and (out / ls["figure"]).exists()
    # the path slice passes through the base model (t = 0): its loss there is the base's
    path = np.load(out / doc["landscapes"]["path"]["file"])
    at_base = np.flatnonzero(np.isclose(path["xs"], -1.0))
    assert at_base.size == 1
    base_losses, _ = _hand_eval(task.build_model(None), base_dir, train)
    assert path["losses"][at_base[0]] == pytest.approx(base_losses.mean(), rel=1e-4)


def _top_hessian_eigenvalue(model, base_dir, data, ckpt, *, tangent=False):
    """Largest eigenvalue of the Hessian of the mean cross-entropy over ``data`` with respect
    to the tensors ``ckpt`` updates, by ARPACK on autograd Hessian-vector products; with
    ``tangent``, of P H P where P projects each low-rank update's tensor onto the updates
    its factors reach, X -> X Pa + Pb X - Pb X Pa."""
    from scipy.sparse.linalg import LinearOperator, eigsh
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    params = dict(model.named_parameters())
    names = [
        n
        for n in params
        if any(n == u.param or n.endswith("." + u.param) for u in ckpt.updates.values())
    ]
    assert names
    ps = [params[n].requires_grad_(True) for n in names]
    projections = []
    for n in names:
        u = next(u for u in ckpt.updates.values() if n == u.param or n.endswith("." + u.param))
        if tangent and u.kind == "lowrank":
            qb = np.linalg.qr(u.B.double().numpy())[0]
            qa = np.linalg.qr(u.A.double().numpy().T)[0]
            pb, pa = qb @ qb.T, qa @ qa.T
            projections.append(lambda x, pb=pb, pa=pa: x @ pa + pb @ x - pb @ x @ pa)
        else:
            projections.append(lambda x: x)

    def project(v):
        out, i = np.empty_like(v), 0
        for p, proj in zip(ps, projections, strict=True):
            k = p.numel()
            out[i : i + k] = proj(v[i : i + k].reshape(tuple(p.shape))).reshape(-1)
            i += k
        return out

    enc = tok(list(data.texts), return_tensors="pt", padding=True)  # masked: exact
    model.config._attn_implementation = "eager"  # double backward

    def hvp(v):
        v = torch.as_tensor(project(np.asarray(v, dtype=np.float64)), dtype=torch.float32)
        chunks, i = [], 0
        for p in ps:
            chunks.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, data.labels)
        grads = torch.autograd.grad(loss, ps, create_graph=True)
        dot = sum((g * c).sum() for g, c in zip(grads, chunks, strict=True))
        hv = torch.autograd.grad(dot, ps)
        return project(torch.cat([h.reshape(-1) for h in hv]).double().numpy())

    dim = sum(p.numel() for p in ps)
    vals = eigsh(LinearOperator((dim, dim), matvec=hvp, dtype=np.float64), k=1, which="LA",
                 tol=1e-8, return_eigenvectors=False)  # fmt: skip
    return float(vals[0])


def test_run_folder_records_its_task(tmp_path):
    """A genbound run saved with a task reference is reported on data with no flags."""
    from genbound.adapters import apply

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    train, test = random_texts(30, 2), random_texts(20, 3)
    paths = _write_csv(tmp_path / "train.csv", train), _write_csv(tmp_path / "test.csv", test)
    kwargs = {
        "train": str(paths[0]),
        "test": str(paths[1]),
        "text_column": "tweet",
        "label_column": "sentiment",
        "label_names": list(LABELS),
    }
    assert text_files(**kwargs).train.label_names == LABELS
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    handle = apply(model, "cla", rank=2, targets=["query", "value"], head=["classifier"])
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    run = handle.save(
        tmp_path / "run",
        base_model=base_dir,
        data={"task": "genbound.tasks.hf_text:text_files", "kwargs": kwargs},
        n_train=30,
    )
    assert (
        main(["report", str(run), "--out", str(tmp_path / "rep"), "--skip", "curvature,landscape"])
        == 0
    )
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["data"]["reference"]["task"] == "genbound.tasks.hf_text:text_files"
    assert doc["data"]["n_train_source"] == "checkpoint"
    assert doc["gap"]["train"]["n"] == 30 and doc["gap"]["test"]["n"] == 20
    assert doc["bounds"]["compression"]["n_train"] == 30
    assert not doc["warnings"]
    # the same numbers from the library, on the handle's merged model
    merged = handle.merge().eval()
    (ltr, _), (lte, _) = _hand_eval(merged, base_dir, train), _hand_eval(merged, base_dir, test)
    assert doc["gap"]["loss_gap"] == pytest.approx(lte.mean() - ltr.mean(), rel=1e-4, abs=1e-6)


def test_task_reference_errors(tmp_path, setup, capsys):
    _, ckpt, *_ = setup
    cases = [
        (["--task", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
        (["--task", "genbound.datasets:nothing"], "has no attribute 'nothing'"),
        (["--task", "genbound.datasets"], "expected 'package.module:function'"),
        (["--task", "genbound.datasets:tweets_path"], "not a task"),
        (["--task-arg", "a=1"], "--task-arg needs --task"),
        (["--data", str(tmp_path / "missing.csv"), str(tmp_path / "test.csv")], "missing.csv"),
        (["--data", str(tmp_path / "train.csv"), str(tmp_path / "test.csv")], "column missing"),
        (["--only", "gap,nonsense"], "unknown part"),
    ]
    if not torch.cuda.is_available():
        data = ["--data", str(tmp_path / "train.csv"), str(tmp_path / "test.csv")]
        data += ["--text-column", "tweet", "--label-column", "sentiment"]
        cases.append(([*data, "--device", "cuda"], "expected a CUDA device; found none"))
    for extra, message in cases:
        out = tmp_path / "rep-err"
        code = main(["report", str(ckpt.path), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert message in err, (extra, err)
        assert "Traceback" not in err
        assert not out.exists()


def test_load_task_and_only_parts(tmp_path, setup):
    _, ckpt, *_, (train_csv, test_csv) = setup
    ref = TaskReference.from_json(
        {
            "task": "genbound.tasks.hf_text:text_files",
            "kwargs": {
                "train": str(train_csv),
                "test": str(test_csv),
                "text_column": "tweet",
                "label_column": "sentiment",
            },
        }
    )
    task = load_task(ref)
    assert task.n_train == 40 and task.num_labels == 3
    assert task.train.label_names == task.test.label_names == LABELS
    out = tmp_path / "only"
    args = ["report", str(ckpt.path), "--out", str(out), "--only", "gap,mi"]
    assert main([*args, "--data", str(train_csv), str(test_csv), "--text-column", "tweet",
                 "--label-column", "sentiment"]) == 0  # fmt: skip
    doc = json.loads((out / "report.json").read_text())
    assert doc["gap"] is not None and doc["bounds"]["mi"] is not None
    assert doc["bounds"]["compression"] is None and doc["bounds"]["theorem1"] is None
    assert doc["updates"] == []


def test_mi_loss_choice_and_observed_losses(tmp_path, setup, capsys):
    _, ckpt, *_, (train_csv, test_csv) = setup
    data = ["--data", str(train_csv), str(test_csv), "--text-column", "tweet"]
    data += ["--label-column", "sentiment", "--only", "gap,mi"]
    out = tmp_path / "ce"
    assert (
        main(["report", str(ckpt.path), "--out", str(out), *data, "--mi-loss", "clipped_ce:0.5"])
        == 0
    )
    doc = json.loads((out / "report.json").read_text())
    mi = doc["bounds"]["mi"]
    assert mi["loss"]["kind"] == "clipped_ce" and mi["loss"]["loss_range"] == 0.5
    assert mi["bound"] == pytest.approx(
        math.sqrt(2 * 0.25**2 * mi["q"] * math.log(2) * mi["d_actual"] / 40), rel=1e-12
    )
    # random labels: cross-entropies near ln 3 > 0.5, which the result must say
    assert doc["gap"]["train"]["max_loss"] > 0.5
    assert any("outside the loss range" in w for w in mi["warnings"])
    assert "outside the loss range" in (out / "report.md").read_text()
    assert main(["report", str(ckpt.path), "--out", str(tmp_path / "sm"), *data,
                 "--mi-loss", "smoothed_ce:0.1"]) == 0  # fmt: skip
    mi = json.loads((tmp_path / "sm" / "report.json").read_text())["bounds"]["mi"]
    assert mi["loss"]["num_classes"] == 3
    assert mi["loss"]["loss_range"] == pytest.approx(math.log1p(0.9 * 3 / 0.1), rel=1e-12)
    assert main(["report", str(ckpt.path), "--out", str(tmp_path / "bad"), "--mi-loss", "ce"]) == 2
    assert "--mi-loss" in capsys.readouterr().err


def test_report_on_a_folder_of_checkpoints_compares_and_reuses(tmp_path, capsys):
    """``genbound report DIR`` with several checkpoints: a report each, the comparison, and
    reuse by content on the second run; ``--jobs 2`` gives the same numbers."""
    from conftest import randomize_adapters
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    sweep = tmp_path / "sweep"
    for i, (r, targets) in enumerate([(2, ["query"]), (4, ["query", "value"]), (1, ["value"])]):
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3)
        pm = get_peft_model(
            model, LoraConfig(r=r, target_modules=targets, modules_to_save=["classifier"])
        )
        randomize_adapters(pm, seed=i, scale=0.3 * (i + 1))
        pm.save_pretrained(sweep / f"run{i}" / "checkpoint-5")
    train, test = random_texts(30, 5), random_texts(20, 6)
    paths = _write_csv(tmp_path / "train.csv", train), _write_csv(tmp_path / "test.csv", test)
    args = ["report", str(sweep), "--data", str(paths[0]), str(paths[1]), "--text-column", "tweet"]
    args += ["--label-column", "sentiment", "--skip", "curvature,landscape"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "3 checkpoints (3 reported now, 0 reused)" in printed.out
    assert "[3/3] run2/checkpoint-5: reported" in printed.err and "s left" in printed.err
    out = sweep / "genbound-report"
    doc = json.loads((out / "sweep" / "sweep.json").read_text())
    names = [f"run{i}__checkpoint-5" for i in range(3)]
    assert [r["run"] for r in doc["rows"]] == names
    for row in doc["rows"]:
        rep = json.loads((out / "reports" / row["run"] / "report.json").read_text())
        assert row["gap_error"] == rep["gap"]["error_gap"]
        assert row["mi_bound"] == rep["bounds"]["mi"]["bound"]
        assert row["num_trainable"] == rep["checkpoint"]["num_trainable"]
    taus = {c["measure"]: c for c in doc["correlations"]}
    assert taus["mi_bound"]["n"] == 3
    assert (out / "sweep" / "figures" / "measures_vs_gap.png").exists()
    # again: nothing recomputed; one checkpoint changed: only it
    assert main(args) == 0
    assert "(0 reported now, 3 reused)" in capsys.readouterr().out
    (sweep / "run1" / "checkpoint-5" / "README.md").write_text("changed\n")
    assert main(args) == 0
    assert "(1 reported now, 2 reused)" in capsys.readouterr().out
    # separate processes: the same numbers
    out2 = tmp_path / "jobs2"
    assert main([*args, "--jobs", "2", "--out", str(out2)]) == 0
    for name in names:
        a = json.loads((out / "reports" / name / "report.json").read_text())
        b = json.loads((out2 / "reports" / name / "report.json").read_text())
        assert a["gap"] == b["gap"] and a["bounds"] == b["bounds"] and a["updates"] == b["updates"]


def test_readme_data_example_runs(tmp_path, setup, monkeypatch):
    """The README's Python example for data, as written, on the tiny checkpoint."""
    from pathlib import Path

    _, ckpt, _, train, test, _ = setup
    for name, data in (("train.csv", train), ("test.csv", test)):
        with open(tmp_path / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(zip(data.texts, [LABELS[y] for y in data.labels.tolist()], strict=True))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Data: the gap", 1)[1]
    code = re.search(r"```python\n(.+?)\n```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    env = {"ckpt": ckpt}
    exec(compile(code, "README.md", "exec"), env)
    assert (tmp_path / "landscape.png").exists()
    assert env["ad"].trainable != env["tr"].trainable and not env["notes"]
