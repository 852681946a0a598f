"""The Gaussian PAC-Bayes-kl certificate: the KL against the closed form of two Gaussians,
the Monte Carlo bound against a linear classifier's exact posterior error, the final bound
recomputed by hand with scipy's brentq, the model path against a numpy forward pass (model
left bit-exact), and the measure's report.json entry and sweep scalar."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import np_kl_inverse
from scipy.stats import norm
from test_regression_task import CLIP, N_TRAIN, forward_np, trained  # noqa: F401

from genbound import GenboundError
from genbound.bounds.compression import trainable_tensors, with_trainable_tensors
from genbound.bounds.gaussian import SIGMAS, gaussian_bound, gaussian_bound_on, gaussian_kl
from genbound.measures import measure_checkpoint, sweep_scalars
from genbound.options import ReportOptions
from genbound.report.writer import write_report


def dense_gaussian_kl(mu_q, cov_q, mu_p, cov_p) -> float:
    """KL(N(mu_q, cov_q) || N(mu_p, cov_p)) for dense covariances (numpy)."""
    inv = np.linalg.inv(cov_p)
    d = mu_p - mu_q
    _, ldp = np.linalg.slogdet(cov_p)
    _, ldq = np.linalg.slogdet(cov_q)
    return 0.5 * (np.trace(inv @ cov_q) + d @ inv @ d - mu_q.size + ldp - ldq)


# -- a linear classifier: the posterior's error in closed form ------------------------------

N = 400
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, 3))
W = np.array([1.0, -2.0, 0.5])
Y = np.sign(X @ W + 0.7 * _rng.normal(size=N))


def linear_error(tensors, units) -> float:
    idx = np.arange(N) if units is None else units
    w = tensors["w"].numpy()
    return float(np.mean(Y[idx] * (X[idx] @ w) < 0))


def exact_posterior_error(res) -> float:
    """e_Q(S) = mean_i Phi(-y_i w.x_i / sqrt(sum_j s_j^2 x_ij^2)) for Q = N(W, diag(s^2))."""
    var = res.sigma**2 * (W**2 if res.candidate == "magnitude" else 1.0) + (
        res.eps**2 if res.candidate == "magnitude" else 0.0
    )
    sd = np.sqrt((X**2 * var).sum(axis=1))
    return float(np.mean(norm.cdf(-Y * (X @ W) / sd)))


def test_kl_against_the_dense_closed_form():
    rng = np.random.default_rng(1)
    disp = rng.normal(size=7)
    var = rng.uniform(0.1, 2.0, size=7)
    want = dense_gaussian_kl(disp, np.diag(var), np.zeros(7), 0.8 * np.eye(7))
    assert gaussian_kl(disp, var, 0.8) == pytest.approx(want, rel=1e-12)
    assert gaussian_kl(disp, 0.3, 0.3) == pytest.approx(disp @ disp / 0.6, rel=1e-12)


@pytest.mark.parametrize("candidate", ["isotropic", "magnitude"])
def test_monte_carlo_bound_holds_and_kl_is_the_closed_form(candidate):
    for seed in range(20):
        res = gaussian_bound(
            {"w": torch.tensor(W)}, linear_error, N, samples=100, seed=seed,
            candidates=(candidate,), num_classes=2,
        )  # fmt: skip
        exact = exact_posterior_error(res)
        assert res.mc_bound >= exact
        # the estimate is unbiased: within 5 standard errors of a Bernoulli mean
        assert abs(res.mc_error - exact) <= 5 * math.sqrt(exact * (1 - exact) / res.samples)
        var = res.sigma**2 * (W**2 if candidate == "magnitude" else 1.0)
        var = var + (res.eps**2 if candidate == "magnitude" else 0.0)
        want = dense_gaussian_kl(
            W, np.diag(var * np.ones(3)), np.zeros(3), res.prior_sigma**2 * np.eye(3)
        )
        assert res.kl == pytest.approx(want, rel=1e-10)
        assert res.sq_distance == pytest.approx(W @ W, rel=1e-14)


def test_exact_error_agrees_with_large_sampling():
    res = gaussian_bound({"w": torch.tensor(W)}, linear_error, N, samples=10, seed=0)
    g = np.random.default_rng(5)
    sd = res.sigma * (np.abs(W) if res.candidate == "magnitude" else 1.0)
    sd = np.sqrt(sd**2 + (res.eps**2 if res.candidate == "magnitude" else 0.0))
    ws = W + sd * g.normal(size=(20000, 3))
    sampled = np.mean((Y[None, :] * (ws @ X.T)) < 0)
    assert abs(sampled - exact_posterior_error(res)) < 5 * math.sqrt(0.25 / (20000 * N)) + 3e-3


def test_final_bound_by_hand():
    res = gaussian_bound(
        {"w": torch.tensor(W)}, linear_error, N, samples=50, examples_per_sample=N, seed=2,
        num_classes=2,
    )  # fmt: skip
    g = len(SIGMAS)
    assert res.num_choices == g + g * g and res.examples_per_sample == N
    mc_rhs = math.log(2 / res.delta_mc) / res.samples
    assert res.mc_rhs == pytest.approx(mc_rhs, rel=1e-14)
    assert res.mc_bound == pytest.approx(np_kl_inverse(res.mc_error, mc_rhs), rel=1e-9)
    rhs = (res.kl + math.log(2 * math.sqrt(N) / res.delta) + math.log(res.num_choices)) / N
    assert res.rhs == pytest.approx(rhs, rel=1e-12)
    assert res.bound == pytest.approx(np_kl_inverse(res.mc_bound, rhs), rel=1e-9)
    assert res.vacuous == (res.bound >= 0.5) and res.vacuous_at == 0.5
    scored = [c for c in res.pilot if c.pilot_bound is not None]
    best = min(scored, key=lambda c: (c.pilot_bound, c.rhs))
    assert (best.candidate, best.sigma) == (res.candidate, res.sigma)


def test_prior_centre_and_bad_input():
    centre = {"w": torch.tensor([1.0, -1.0, 0.0])}
    res = gaussian_bound(
        {"w": torch.tensor(W)}, linear_error, N, samples=5, candidates=("isotropic",),
        prior_centre=centre,
    )  # fmt: skip
    d = W - centre["w"].numpy()
    assert res.kl == pytest.approx(d @ d / (2 * res.sigma**2), rel=1e-12)
    t = {"w": torch.tensor(W)}
    bad = [
        ({"samples": 0}, "samples"),
        ({"examples_per_sample": N + 1}, "examples_per_sample"),
        ({"sigmas": (0.1, -1.0)}, "sigmas"),
        ({"candidates": ("laplace",)}, "candidates"),
        ({"prior_centre": {"v": torch.zeros(3)}}, "'v'"),
        ({"prior_centre": {"w": torch.zeros(2)}}, "shape"),
        ({"delta": 0.0}, "delta"),
    ]
    for kw, match in bad:
        with pytest.raises(GenboundError, match=match):
            gaussian_bound(t, linear_error, N, **kw)


# -- on a checkpoint: the model path ---------------------------------------------------------


def test_model_path_matches_numpy_and_leaves_the_model_bit_exact(trained):  # noqa: F811
    ckpt, task, base_state, _ = trained
    tr, _ = task.objectives(ckpt)
    model = tr.model
    model.fc1.train()
    model.head.weight.requires_grad_(False)
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [(p.requires_grad, p.grad) for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    kw = {"samples": 6, "sigmas": (1e-3, 1e-2, 1e-1), "pilot_examples": 16, "seed": 3}
    res = gaussian_bound_on(ckpt, tr, **kw)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [(p.requires_grad, p.grad) for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[2]
    assert np.array_equal(np.random.get_state()[1], rng[1])

    x, y = task.train

    def numpy_error(tensors, units):
        idx = np.arange(N_TRAIN) if units is None else units
        pred = forward_np(with_trainable_tensors(ckpt, tensors), base_state, x[idx])
        return float(np.minimum(((pred - y[idx].double().numpy()) ** 2).sum(axis=1), CLIP).mean())

    m = task.metric
    want = gaussian_bound(
        trainable_tensors(ckpt), numpy_error, N_TRAIN, error_range=m.error_range,
        chance=m.chance, error_name=m.error_name, prior_centre=ckpt.initial, **kw,
    )  # fmt: skip
    assert ckpt.initial is not None  # the run recorded its A: the prior is centred there
    assert res.mc_error == pytest.approx(want.mc_error, rel=1e-5)
    assert (res.candidate, res.sigma, res.kl) == (want.candidate, want.sigma, want.kl)
    assert res.bound == pytest.approx(want.bound, rel=1e-5)
    assert res.error_range == CLIP and res.vacuous_at == m.chance
    r = CLIP
    assert res.bound == pytest.approx(r * np_kl_inverse(res.mc_bound / r, res.rhs), rel=1e-9)


def test_measure_json_markdown_and_sweep_scalar(trained, tmp_path):  # noqa: F811
    ckpt, task, _, _ = trained
    opts = ReportOptions(parts=("pacbayes",), pacbayes_samples=5)
    meas = measure_checkpoint(ckpt, task=task, options=opts)
    res = meas.result("pacbayes")
    assert res is not None and res.samples == 5
    folder = write_report(ckpt, tmp_path / "rep", meas)
    doc = json.loads((folder / "report.json").read_text())
    entry = doc["bounds"]["pacbayes"]
    for key in ("bound", "kl", "sigma", "mc_error", "mc_bound", "rhs", "n_train", "samples"):
        assert entry[key] == getattr(res, key)
    assert len(entry["pilot"]) == len(res.pilot) and entry["assumptions"]
    scalar = dict(sweep_scalars())["pacbayes_bound"]
    assert scalar.read(doc) == res.bound and scalar.trivial(doc) == res.vacuous_at
    md = (folder / "report.md").read_text()
    assert "Gaussian PAC-Bayes" in md and f"{res.num_coordinates:,}" in md
    assert ReportOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts
    with pytest.raises(GenboundError, match="pacbayes_samples"):
        ReportOptions(pacbayes_samples=0)


def test_a_genbound_run_centres_the_prior_at_its_initial_factors(tmp_path):
    """A LoRA run records each A as drawn from the seed (a chain: every link's); the
    measure's prior is centred there, so ||theta_hat - theta_0||^2 counts A - A0, and a
    manifest naming a tensor the run did not train fails clearly."""
    from test_adapters import MLP, save_base
    from test_subspace_bound import objective, toy_task

    import genbound.adapters as ga
    from genbound import load_checkpoint
    from genbound.bounds.gaussian import gaussian_bound_on
    from genbound.train import fit

    x, y = toy_task(96)
    h = ga.apply(MLP(), "lora", rank=2, targets=["fc1", "fc2"], head=["classifier"], seed=1)
    drawn = {name: layer.A.detach().clone() for name, layer in h.layers.items()}
    fit(h, (x, y), epochs=2, lr=1e-2, batch_size=32, eval_train=False)
    run = h.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path), n_train=96)
    ckpt = load_checkpoint(run)
    assert set(ckpt.initial) == {"fc1::A", "fc2::A"}
    for name, a0 in drawn.items():
        assert torch.equal(ckpt.initial[f"{name}::A"], a0)
        assert not torch.equal(ckpt.updates[name].A, a0)  # A trained
    res = gaussian_bound_on(ckpt, objective(ckpt, x, y), num_classes=3, samples=10, seed=0)
    coded = trainable_tensors(ckpt)
    want = sum(
        float((v.double() - ckpt.initial.get(k, torch.zeros_like(v)).double()).square().sum())
        for k, v in coded.items()
    )
    assert res.sq_distance == pytest.approx(want, rel=1e-12)
    assert res.sq_distance < sum(float(v.double().square().sum()) for v in coded.values())

    man = json.loads((run / "genbound.json").read_text())
    man["initial"]["fc3::A"] = man["initial"].pop("fc2::A")
    (run / "genbound.json").write_text(json.dumps(man))
    with pytest.raises(GenboundError, match=r"initial\.fc3::A"):
        load_checkpoint(run)


def test_a_chain_records_every_links_initial_factors(tmp_path):
    from test_adapters import MLP, save_base

    import genbound.adapters as ga
    from genbound import load_checkpoint

    h = ga.apply(MLP(), "cola", rank=2, targets=["fc1"], seed=3, chain=2)
    first = h.layers["fc1"].A.detach().clone()
    h.chain_step()
    second = h.layers["fc1"].A.detach().clone()
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=save_base(MLP(), tmp_path)))
    assert torch.equal(ckpt.initial["fc1::link0::A"], first)
    assert torch.equal(ckpt.initial["fc1::link1::A"], second)
    assert set(ckpt.initial) <= set(trainable_tensors(ckpt))
