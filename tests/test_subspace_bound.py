"""The coded bound of a subspace run: the code is z (plus d in an Elias gamma code), the
decoded model is rebuilt from the quantized z, and every number is recomputed by hand: the
expansion with a dense numpy P, the forward pass in numpy, the KT code length by the
sequential adaptive product, the kl inverse with brentq. Quantization-aware fine-tuning
leaves z on the codebook it was tuned for."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import np_kl_inverse
from safetensors.torch import load_file
from test_adapters import MLP, save_base

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.adapters.projection import KronProjection
from genbound.bounds.compression import (
    _fingerprint,
    compression_bound,
    elias_gamma_bits,
    trainable_tensors,
    with_trainable_tensors,
)
from genbound.bounds.evaluated import compression_bound_on, train_error_with
from genbound.bounds.mi import mi_bound
from genbound.measures import measure_checkpoint
from genbound.options import ReportOptions
from genbound.qat import LloydSTE, quantization_aware_fit
from genbound.report.writer import write_report
from genbound.tasks.metric import classification
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import load_updates_into
from genbound.train import SUBSPACE_LR, fit

D_SUB, RANK, ALPHA, N = 24, 2, 4.0, 192


def toy_task(n: int = N):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=gen)
    y = (x @ torch.randn(32, 3, generator=gen)).argmax(1)
    return x, y


def sequential_kt_bits(indices: np.ndarray, k: int) -> float:
    """-log2 of the KT estimator's sequential probability, symbol by symbol."""
    counts, bits = np.zeros(k), 0.0
    for t, j in enumerate(indices.tolist()):
        bits -= math.log2((counts[j] + 0.5) / (t + k / 2))
        counts[j] += 1
    return bits


def objective(ckpt, x, y) -> Objective:
    model = load_updates_into(MLP(), ckpt).eval()
    batches = [Batch(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    return Objective(model, batches, cross_entropy_loss, (), "mlp", metric=classification(3))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """A LoRA subspace run (fc1, fc2 and the head inside P z), trained, then fine-tuned
    quantization-aware at b = 2 and saved: (checkpoint, base state, data, fit results)."""
    tmp = tmp_path_factory.mktemp("subspace_bound")
    x, y = toy_task()
    model = MLP()
    base = save_base(model, tmp)
    h = ga.apply(
        model, "lora", rank=RANK, alpha=ALPHA, targets=["fc1", "fc2"], head=["classifier"],
        seed=4, subspace=D_SUB,
    )  # fmt: skip
    fit(h, (x, y), epochs=6, lr=SUBSPACE_LR, batch_size=32, eval_train=False)
    qat = quantization_aware_fit(h, (x, y), bits=2, epochs=2, batch_size=32)
    ckpt = load_checkpoint(h.save(tmp / "run", base_model=base, n_train=N))
    return ckpt, load_file(base), (x, y), qat, tmp


def test_elias_gamma_lengths_by_enumerating_the_codewords():
    words = []
    for n in range(1, 2049):
        word = "0" * (n.bit_length() - 1) + format(n, "b")
        assert elias_gamma_bits(n) == len(word)
        words.append(word)
    words.sort()
    assert not any(b.startswith(a) for a, b in itertools.pairwise(words))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(GenboundError, match="positive integer"):
            elias_gamma_bits(bad)


def test_qat_leaves_z_on_a_half_precision_codebook(qat_run):
    ckpt, _, _, qat, _ = qat_run
    (key, z), = trainable_tensors(ckpt).items()  # fmt: skip
    assert key == "subspace::link0::z" and tuple(z.shape) == (D_SUB,)
    values = torch.unique(z)
    assert values.numel() <= 4
    assert torch.equal(values.half().float(), values)  # exact at the bound's 16 bits
    assert ckpt.hparams.extra["qat_bits"] == 2
    # the last epoch evaluated the model that was saved
    assert qat.train_acc is not None and qat.history[-1]["epoch"] == 2


def test_ste_passes_the_gradient_through_and_quantizes_the_forward():
    ste = LloydSTE(2)
    z = torch.tensor([-1.0, -0.9, 0.1, 0.15, 2.0, 2.2], requires_grad=True)
    w = torch.arange(6.0)
    out = ste(z)
    assert torch.equal(out.detach(), ste.quantized(z))
    assert torch.unique(out.detach()).numel() <= 4
    (w * out).sum().backward()
    assert torch.equal(z.grad, w)


def test_coded_bound_by_hand(qat_run):
    ckpt, base, (x, y), _, _ = qat_run
    res = compression_bound_on(ckpt, objective(ckpt, x, y), num_classes=3)
    man = json.loads((ckpt.path / "genbound.json").read_text())
    sub = man["subspace"]
    assert ckpt.num_trainable == D_SUB and mi_bound(ckpt).d_actual == D_SUB
    theta0 = np.concatenate(
        [load_file(ckpt.path / "updates.safetensors")[k].double().numpy().ravel()
         for k in sub["links"][0]["initial"]]
    )  # fmt: skip
    P = KronProjection(sub["D"], D_SUB, sub["seed"]).dense().numpy()
    for cand in res.candidates:
        if not cand.evaluated:
            continue
        q = cand.quantization
        zq = q.tensors()["subspace::link0::z"].double().numpy()
        # the code: d, one codebook of 2^b half floats, the KT-coded indices
        kt = sequential_kt_bits(q.indices[0].astype(np.int64), 2**cand.bits)
        K = (2 * int(math.log2(D_SUB)) + 1) + 2**cand.bits * 16 + math.ceil(kt) + 1
        assert cand.code_bits == K
        rhs = (K * math.log(2) + math.log(2 * math.sqrt(N) / 0.05) + math.log(8)) / N
        assert cand.rhs == pytest.approx(rhs, rel=1e-12)
        # the decoded model, expanded and run in numpy
        theta = theta0 + P @ zq
        pieces, at = {}, 0
        for t in sub["tensors"]:
            n = math.prod(t["shape"])
            pieces[t["name"]] = theta[at : at + n].astype(np.float32).astype(np.float64)
            pieces[t["name"]] = pieces[t["name"]].reshape(t["shape"])
            at += n
        w = {k: v.double().numpy() for k, v in base.items()}
        for layer in ("fc1", "fc2"):
            w[f"{layer}.weight"] = w[f"{layer}.weight"] + (ALPHA / RANK) * (
                pieces[f"{layer}.B"] @ pieces[f"{layer}.A"]
            )
        h1 = np.tanh(x.double().numpy() @ w["fc1.weight"].T + w["fc1.bias"])
        h2 = np.tanh(h1 @ w["fc2.weight"].T + w["fc2.bias"])
        logits = h2 @ pieces["classifier.weight"].T + pieces["classifier.bias"]
        error = float(np.mean(logits.argmax(1) != y.numpy()))
        assert cand.train_error == error
        assert cand.bound == pytest.approx(np_kl_inverse(error, rhs), rel=1e-9)
    two = next(c for c in res.candidates if c.bits == 2)
    # fine-tuned at b = 2: that candidate decodes exactly the saved z
    assert torch.equal(two.quantization.tensors()["subspace::link0::z"], ckpt.subspace.z[0])
    assert res.chosen.code.preamble.bits == elias_gamma_bits(D_SUB)
    assert any("fixed before training" in a for a in res.assumptions)


def test_report_writes_the_quantized_z_and_the_subspace(qat_run):
    ckpt, _, (x, y), _, tmp = qat_run

    class Task:
        n_train, num_labels, description = N, 3, "toy"
        metric = classification(3)

        def objectives(self, checkpoint):
            return objective(checkpoint, x, y), objective(checkpoint, x, y)

    opts = ReportOptions(parts=("compression", "mi", "pacbayes"), pacbayes_samples=20)
    m = measure_checkpoint(ckpt, task=Task(), options=opts, n_train=N)
    out = write_report(ckpt, tmp / "report", m)
    doc = json.loads((out / "report.json").read_text())
    assert doc["checkpoint"]["subspace"] == {
        "kind": "kron", "d": D_SUB, "D": ckpt.subspace.D, "seed": ckpt.subspace.seed,
        "links": 1, "num_coded": D_SUB,
    }  # fmt: skip
    comp = doc["bounds"]["compression"]
    assert comp["preamble"]["bits"] == elias_gamma_bits(D_SUB)
    coded = load_file(out / comp["quantized_tensors"])
    assert list(coded) == ["subspace::link0::z"]
    assert torch.equal(coded["subspace::link0::z"], m.compression.quantized["subspace::link0::z"])
    md = (out / "report.md").read_text()
    assert "subspace run: only z (d = 24)" in md
    assert "The code states d = 24 in 9 bits (Elias gamma code)" in md
    # the Gaussian certificate perturbs z around its initial value 0
    gauss = doc["bounds"]["pacbayes"]
    assert gauss["num_coordinates"] == D_SUB
    assert gauss["sq_distance"] == pytest.approx(float(ckpt.subspace.z[0].double().square().sum()))


def test_chained_run_codes_every_link_and_rebuilds_them(tmp_path):
    x, y = toy_task(64)
    model = MLP()
    h = ga.apply(model, "c3la", rank=2, targets=["fc1", "fc2"], seed=2, subspace=10, chain=2)
    fit(h, (x, y), epochs=2, lr=SUBSPACE_LR, batch_size=16, eval_train=False)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path)))
    coded = trainable_tensors(ckpt)
    assert list(coded) == ["subspace::link0::z", "subspace::link1::z"]
    assert ckpt.num_trainable == 20 and mi_bound(ckpt, n_train=64).d_actual == 20
    same = with_trainable_tensors(ckpt, coded)
    for name, u in ckpt.updates.items():
        assert torch.equal(same.updates[name].delta(), u.delta()), name
    moved = with_trainable_tensors(ckpt, {k: 2 * v for k, v in coded.items()})
    assert not torch.equal(moved.updates["fc1"].delta(), ckpt.updates["fc1"].delta())
    with pytest.raises(GenboundError, match=r"subspace::link1::z.*shape \(10,\)"):
        with_trainable_tensors(ckpt, {"subspace::link0::z": coded["subspace::link0::z"]})


def test_qat_needs_a_subspace_run_at_its_last_link():
    x, y = toy_task(32)
    plain = ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0)
    with pytest.raises(GenboundError, match="expected a subspace run"):
        quantization_aware_fit(plain, (x, y), bits=2)
    chained = ga.apply(MLP(), "c3la", rank=2, targets=["fc1"], seed=0, subspace=8, chain=3)
    chained.chain_step()
    with pytest.raises(GenboundError, match=r"a fresh chain .* or its last link"):
        quantization_aware_fit(chained, (x, y), bits=2)
    sub = ga.apply(MLP(), "lora", rank=2, targets=["fc1"], seed=0, subspace=8)
    with pytest.raises(GenboundError, match=r"bits must be in 1\.\.16"):
        quantization_aware_fit(sub, (x, y), bits=0)


def test_candidates_that_decode_the_same_model_are_evaluated_once(qat_run):
    ckpt, _, (x, y), _, _ = qat_run
    calls = []
    obj = objective(ckpt, x, y)

    def counted(tensors):
        calls.append(_fingerprint(tensors))
        return train_error_with(obj, ckpt, tensors)

    res = compression_bound(trainable_tensors(ckpt), counted, N, num_classes=3, prune=False)
    # z holds <= 4 values: every b >= 2 decodes the saved z exactly, one model
    assert len(calls) == len(set(calls)) == 2
    errors = {c.bits: c.train_error for c in res.candidates}
    assert all(errors[b] == errors[2] for b in range(2, 9))
    assert errors[2] == train_error_with(obj, ckpt, trainable_tensors(ckpt))
    # the checkpoint's own error, measured already (the gap's), serves b >= 2
    calls.clear()
    own = train_error_with(obj, ckpt, trainable_tensors(ckpt))
    again = compression_bound(
        trainable_tensors(ckpt), counted, N, num_classes=3, prune=False,
        measured=(trainable_tensors(ckpt), own),
    )  # fmt: skip
    assert len(calls) == 1
    assert [(c.bits, c.train_error, c.bound) for c in again.candidates] == [
        (c.bits, c.train_error, c.bound) for c in res.candidates
    ]


def test_a_chain_trained_quantization_aware_stores_every_link_on_its_codebook(tmp_path):
    x, y = toy_task(64)
    model = MLP()
    h = ga.apply(model, "c3la", rank=2, targets=["fc1", "fc2"], seed=2, subspace=10, chain=2)
    quantization_aware_fit(h, (x, y), bits=1, epochs=2, lr=SUBSPACE_LR, batch_size=16)
    assert h.links_done == 1
    with torch.no_grad():
        live = model(x)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path)))
    for z in ckpt.subspace.z:
        assert torch.unique(z).numel() <= 2
    # the saved links rebuild the model that was trained (link 0 as it was merged)
    merged = load_updates_into(MLP(), ckpt)
    with torch.no_grad():
        assert torch.allclose(merged(x), live, rtol=0, atol=1e-5)
    # one codebook per link: at b = 1 the bound decodes exactly the saved model
    obj = objective(ckpt, x, y)
    res = compression_bound_on(ckpt, obj, num_classes=3, bits=(1, 2))
    one = res.candidates[0]
    assert one.quantization.mode == "per_tensor" and len(one.code.parts) == 2
    for key, z in trainable_tensors(ckpt).items():
        assert torch.equal(one.quantization.tensors()[key], z)
    assert one.train_error == train_error_with(obj, ckpt, trainable_tensors(ckpt))


def test_the_tracker_logs_a_subspace_run_by_its_z(tmp_path):
    """BoundTracker on a subspace handle, unchanged: the MI bound it logs counts d, and its
    finished run reloads to the model trained."""
    from genbound.callbacks import BoundTracker

    x, y = toy_task(64)
    model = MLP()
    base = save_base(MLP(), tmp_path)
    h = ga.apply(model, "lora", rank=2, targets=["fc1"], head=["classifier"], seed=0, subspace=16)
    tracker = BoundTracker(every_n_steps=1, n_train=64, base=base, run_dir=tmp_path / "run")
    tracker.start(h)
    opt = torch.optim.AdamW(h.param_groups(SUBSPACE_LR))
    for step in range(1, 4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        logged = tracker.step(h, step)
    ckpt = load_checkpoint(tracker.finish(h))
    assert ckpt.num_trainable == 16
    assert logged["genbound/mi_bound"] == pytest.approx(mi_bound(ckpt).bound, rel=1e-12)
    with torch.no_grad():
        assert torch.allclose(load_updates_into(MLP(), ckpt)(x), model(x), rtol=0, atol=1e-5)
