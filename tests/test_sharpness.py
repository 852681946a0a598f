"""Flatness and sharpness by bisection (genbound.flatness) against closed forms and dense
grids on a linear classifier, the PAC-Bayes expressions against loops, the two spaces of a
trained LoRA run (the trained tensors' gradient by the chain rule, the merged one by
finite differences, the model left as found), and the report end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_adapters import MLP, save_base

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.bounds.compression import trainable_tensors
from genbound.flatness import (
    KINDS,
    SearchSettings,
    bisect,
    pacbayes_expression,
    pacbayes_magnitude_expression,
    rise_curve,
    search,
)
from genbound.flatness_spaces import flatness_of, merged_space, trained_space
from genbound.measures import get_measure, measure_checkpoint
from genbound.measures.landscape import base_values
from genbound.measures.registry import sweep_scalars
from genbound.options import ReportOptions
from genbound.report.writer import write_report
from genbound.tasks.metric import classification
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import load_updates_into
from genbound.train import fit

EPS = 1e-3

# -- a linear classifier whose error rise is known in closed form ---------------------------


@dataclasses.dataclass
class Linear:
    """Two-class logits X W^T, every example of class 0 and correctly classified; X > 0."""

    X: torch.Tensor  # (n, d)
    W: torch.Tensor  # (2, d)

    @property
    def margins(self) -> torch.Tensor:
        return self.X @ (self.W[0] - self.W[1])

    def evaluate(self, t) -> float:
        wrong = (self.X @ t["W"].T).argmax(1) != 0  # a tie picks class 0 (first maximum)
        return float(wrong.double().mean())

    def gradient(self, t) -> dict[str, torch.Tensor]:
        w = t["W"].detach().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.X @ w.T, torch.zeros(len(self.X)).long())
        (g,) = torch.autograd.grad(loss, w)
        return {"W": g}

    def expected_gaussian(self, sigma: float, magnitude: bool) -> float:
        """E[error] under u ~ N(0, sigma^2) or N(0, sigma^2 W^2 + eps^2) per entry."""
        var = sigma**2 * self.W**2 + EPS**2 if magnitude else torch.full_like(self.W, sigma**2)
        sd = torch.sqrt((self.X**2) @ (var[0] + var[1]))  # sd of the margin's change
        return float(np.mean(norm.cdf(-(self.margins / sd).numpy())))

    def adversarial_thresholds(self, magnitude: bool) -> np.ndarray:
        """Per example, the alpha above which the box's corner (-r for class 0, +r for
        class 1, where sign ascent ends) flips it: margin > sum_i (r_0i + r_1i) x_i."""
        if magnitude:  # r = alpha |W| + eps
            slope = self.X @ (self.W[0].abs() + self.W[1].abs())
            return ((self.margins - 2 * EPS * self.X.sum(1)) / slope).numpy()
        return (self.margins / (2 * self.X.sum(1))).numpy()


def linear(n: int = 200, d: int = 6, seed: int = 0) -> Linear:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.1
    W = torch.randn(2, d, generator=g, dtype=torch.float64)
    m = X @ (W[0] - W[1])
    W[0] += float(((0.05 - m) / X.sum(1)).max())  # every margin >= 0.05
    problem = Linear(X, W)
    assert float(problem.margins.min()) >= 0.05 - 1e-12
    return problem


def tensors(p: Linear) -> dict[str, torch.Tensor]:
    return {"W": p.W}


def first_crossing(rises: np.ndarray, level: float) -> int:
    """Index of the first grid scale whose rise exceeds ``level`` (the grid must cross)."""
    above = np.flatnonzero(rises > level)
    assert above.size and above[0] > 0
    return int(above[0])


@pytest.mark.parametrize("kind", ["gaussian", "adversarial"])
def test_bisection_bracket_holds_the_dense_grids_first_crossing(kind):
    p = linear(n=203)  # no rise of k / (draws * 203) is 0.1: the depth ends the search
    s = SearchSettings(tolerance=0.0, depth=48, samples=5 if kind == "gaussian" else 2, seed=3)
    curve = rise_curve(kind, tensors(p), p.evaluate, p.gradient, settings=s)
    b = bisect(curve, s)
    lo, hi = b.lower, b.upper
    assert b.bracketed and not b.converged and len(b.evaluations) == 48
    assert b.scale in (lo, hi) and b.rise == curve(b.scale)
    assert curve(lo).mean <= s.target < curve(hi).mean
    assert hi / lo < 1 + 1e-9
    # the same draws on a dense grid: the first crossing lies in the bracket's cell
    grid = np.geomspace(1e-4, 10.0, 1500)
    rises = np.array([curve(x).mean for x in grid])
    assert np.all(np.diff(rises) >= 0)  # monotone on this problem: one crossing
    i = first_crossing(rises, s.target)
    assert grid[i - 1] < hi and lo < grid[i]
    # with the tolerance: a scale whose rise is within 0.01, between the grid's
    # first crossings of target - 0.01 and target + 0.01
    t = search(
        kind,
        tensors(p),
        p.evaluate,
        p.gradient,
        settings=dataclasses.replace(s, tolerance=0.01, depth=12),
    )
    assert t.converged and abs(t.rise - 0.1) <= 0.01
    assert grid[first_crossing(rises, 0.09) - 1] < t.scale
    assert t.scale <= grid[first_crossing(rises, 0.11)]
    assert t.lower <= t.scale <= t.upper and t.inverse_square == 1 / t.scale**2
    assert [e.scale for e in t.evaluations][-1] == t.scale


@pytest.mark.parametrize("magnitude", [False, True])
def test_adversarial_rise_is_the_closed_form(magnitude):
    """Sign ascent on a linear two-class model ends at the box's corner, so the error is
    the fraction of examples whose threshold alpha is below the radius."""
    p = linear(n=300, seed=1)
    kind = "adversarial_magnitude" if magnitude else "adversarial"
    s = SearchSettings(samples=2, ascent_steps=3, seed=5)
    found = search(kind, tensors(p), p.evaluate, p.gradient, settings=s)
    thresholds = np.sort(p.adversarial_thresholds(magnitude))
    for e in found.evaluations:
        assert e.rise == np.mean(thresholds < e.scale)  # exact, the same for every start
        assert e.rise_stderr == 0.0
    assert found.converged and found.base_error == 0.0
    # the largest alpha of rise <= 0.11 and the smallest of rise >= 0.09 bracket the answer
    assert thresholds[math.ceil(0.09 * 300) - 1] < found.scale <= thresholds[int(0.11 * 300)]


@pytest.mark.parametrize("magnitude", [False, True])
def test_gaussian_rise_matches_the_normal_cdf(magnitude):
    """The margin of example n moves by N(0, sum_i (v_0i + v_1i) x_i^2): the expected rise
    is the mean of Phi(-margin / sd); the search's estimate is within 4 standard errors of it
    at every step, and the expected rise at the scale found is within the tolerance."""
    p = linear(n=100, seed=2)
    kind = "gaussian_magnitude" if magnitude else "gaussian"
    found = search(kind, tensors(p), p.evaluate, settings=SearchSettings(samples=400, seed=1))
    assert found.converged
    for e in found.evaluations:
        expected = p.expected_gaussian(e.scale, magnitude)
        assert abs(e.rise - expected) <= 4 * e.rise_stderr + 1e-12
    expected = p.expected_gaussian(found.scale, magnitude)
    assert abs(expected - 0.1) <= 0.01 + 4 * found.rise_stderr


def test_searches_that_cannot_bracket_say_so():
    p = linear()
    floor = search("gaussian_magnitude", tensors(p), p.evaluate,
                   settings=SearchSettings(eps=5.0, depth=6))  # fmt: skip
    assert not floor.converged and not floor.bracketed
    assert floor.outcome == "above the target at every scale tried, down to the lower end"
    assert floor.lower == floor.upper == floor.scale == 1e-6 and floor.rise > 0.11
    assert len(floor.evaluations) == 1  # the lower end, then nothing to bisect
    # two classes, noise of any size: the error stays near 1/2, never 0.6 above 0
    out = search("gaussian", tensors(p), p.evaluate,
                 settings=SearchSettings(target=0.6, depth=6))  # fmt: skip
    assert out.outcome == "below the target at every scale tried, up to the upper end"
    assert out.upper == 10.0 and out.lower == out.scale and out.rise < 0.59
    tight = search("gaussian", tensors(p), p.evaluate,
                   settings=SearchSettings(tolerance=0.0, depth=5))  # fmt: skip
    assert tight.outcome == "no scale within the tolerance after 5 steps"


def test_common_random_numbers_make_the_curve_deterministic():
    p = linear()
    seen = []

    def evaluate(t):
        seen.append(t["W"].clone())
        return p.evaluate(t)

    s = SearchSettings(samples=3, seed=7)
    curve = rise_curve("gaussian", tensors(p), evaluate, settings=s, base_error=0.0)
    a, b = curve(0.2), curve(0.2)
    assert a == b
    curve(0.4)
    # draw j at sigma = 0.4 is twice draw j at sigma = 0.2 (the same standard normals)
    for j in range(3):
        torch.testing.assert_close(seen[6 + j] - p.W, 2 * (seen[j] - p.W), rtol=1e-12, atol=0)
    other = rise_curve("gaussian", tensors(p), p.evaluate, settings=dataclasses.replace(s, seed=8))
    assert other(0.2) != a


def test_settings_and_kinds_are_checked():
    for bad, key in [
        ({"depth": 0}, "depth"),
        ({"samples": 1.5}, "samples"),
        ({"tolerance": 0.2}, "tolerance"),
        ({"lower": 2.0, "upper": 1.0}, "upper"),
        ({"eps": 0.0}, "eps"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(GenboundError, match=key):
            SearchSettings(**bad)
    p = linear()
    with pytest.raises(GenboundError, match="one of"):
        rise_curve("uniform", tensors(p), p.evaluate, settings=SearchSettings())
    with pytest.raises(GenboundError, match="gradient"):
        rise_curve("adversarial", tensors(p), p.evaluate, settings=SearchSettings())
    with pytest.raises(GenboundError, match="finite"):
        search("gaussian", tensors(p), lambda t: math.nan)
    for key, value in [("sharpness_depth", 0), ("sharpness_samples", -1), ("sharpness_starts", 0)]:
        with pytest.raises(GenboundError, match=key):
            ReportOptions(**{key: value})


def test_pacbayes_expressions_against_loops():
    rng = np.random.default_rng(0)
    d = rng.normal(size=57) * np.geomspace(1e-5, 1, 57)
    d[3] = 0.0
    m, sigma = 1234, 0.037
    sq = math.fsum(x * x for x in d)
    assert pacbayes_expression(sq, sigma, m) == pytest.approx(
        sq / (4 * sigma**2) + math.log(m) - math.log(sigma) + 10, rel=1e-14
    )
    omega = len(d)
    loop = math.fsum(
        math.log((EPS**2 + (sigma**2 + 1) * sq / omega) / (EPS**2 + sigma**2 * x * x)) for x in d
    )
    got = pacbayes_magnitude_expression(d.reshape(3, 19), sigma, m, EPS)
    assert got == pytest.approx(loop / 4 + math.log(m / sigma) + 10, rel=1e-13)
    for bad in [(sq, 0.0, m), (sq, sigma, 0)]:
        with pytest.raises(GenboundError):
            pacbayes_expression(*bad)


# -- a trained LoRA run on a small MLP -------------------------------------------------------

N = 192


def toy_data(n: int = N):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=gen)
    y = (x @ torch.randn(32, 3, generator=gen)).argmax(1)
    return x, y


def mlp_objective(ckpt, x, y) -> Objective:
    model = load_updates_into(MLP(), ckpt).eval()
    batches = [Batch(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    names = ("fc1.weight", "fc2.weight", "classifier.weight", "classifier.bias")
    return Objective(model, batches, cross_entropy_loss, names, "mlp", metric=classification(3))


class ToyTask:
    n_train, num_labels, description = N, 3, "toy"
    metric = classification(3)

    def __init__(self, x, y):
        self.x, self.y = x, y

    def objectives(self, checkpoint):
        return mlp_objective(checkpoint, self.x, self.y), mlp_objective(checkpoint, self.x, self.y)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run of fc1 and fc2 with the head trained, on a learnable toy task."""
    tmp = tmp_path_factory.mktemp("sharpness")
    x, y = toy_data()
    model = MLP()
    base = save_base(model, tmp)
    h = ga.apply(
        model, "lora", rank=2, alpha=4.0, targets=["fc1", "fc2"], head=["classifier"], seed=4
    )
    fit(h, (x, y), epochs=8, lr=2e-2, batch_size=32, eval_train=False)
    return load_checkpoint(h.save(tmp / "run", base_model=base, n_train=N)), (x, y)


def test_trained_gradient_is_the_chain_rule_of_the_merged_one(lora_run):
    ckpt, (x, y) = lora_run
    obj = mlp_objective(ckpt, x, y)
    merged = merged_space(obj, base_values(ckpt, obj))
    trained = trained_space(ckpt, obj)
    G = merged.gradient(merged.tensors)
    g = trained.gradient(trained.tensors)
    for layer in ("fc1", "fc2"):
        u = next(v for v in ckpt.updates.values() if v.param == f"{layer}.weight")
        B, A, s = u.B.double(), u.A.double(), u.scale
        dW = G[f"{layer}.weight"]
        # the factors are float32 tensors: their gradient is rounded to float32
        torch.testing.assert_close(g[f"{u.name}::B"], s * dW @ A.T, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(g[f"{u.name}::A"], s * B.T @ dW, rtol=1e-6, atol=1e-12)
    head = next(v for v in ckpt.updates.values() if v.param == "classifier.weight")
    torch.testing.assert_close(g[f"{head.name}::delta"], G["classifier.weight"], rtol=1e-12, atol=0)
    # the merged gradient against central differences of the float32 model's mean loss
    v = {
        n: torch.randn(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        for n, t in merged.tensors.items()
    }
    h = 1e-3

    def loss(step):
        params = dict(obj.model.named_parameters())
        with torch.no_grad():
            for n, t in merged.tensors.items():
                params[n].copy_((t + step * v[n]).float())
        return obj.mean_loss()

    fd = (loss(h) - loss(-h)) / (2 * h)
    directional = sum(float((G[n] * v[n]).sum()) for n in G)
    assert fd == pytest.approx(directional, rel=2e-3)
    # the reference: LoRA's recorded initial A, 0 for B and the head's dW
    assert ckpt.initial and all(k.endswith("::A") for k in ckpt.initial)
    assert "for 2 of 6 trained tensors" in trained.reference
    for name, t in trainable_tensors(ckpt).items():
        expect = t.double() - ckpt.initial[name].double() if name in ckpt.initial else t.double()
        torch.testing.assert_close(trained.displacement[name], expect, rtol=0, atol=0)


def trained_run(tmp, method: str, **kwargs):
    x, y = toy_data()
    model = MLP()
    base = save_base(model, tmp)
    h = ga.apply(model, method, rank=2, alpha=4.0, targets=["fc1", "fc2"], head=["classifier"],
                 seed=4, **kwargs)  # fmt: skip
    fit(h, (x, y), epochs=2, lr=2e-2, batch_size=32, eval_train=False)
    ckpt = load_checkpoint(h.save(tmp / "run", base_model=base, n_train=N))
    names = tuple(u.param for u in ckpt.updates.values())
    return ckpt, dataclasses.replace(mlp_objective(ckpt, x, y), trainable=names)


@pytest.mark.parametrize(("method", "kwargs"), [("cla", {}), ("vera", {}), ("rac", {"chain": 2})])
def test_trained_gradient_against_finite_differences(tmp_path, method, kwargs):
    """Selector, VeRA and chained updates: the directional derivative of the mean loss in
    the trained tensors (float32 model, central differences, h = 1e-3)."""
    ckpt, obj = trained_run(tmp_path, method, **kwargs)
    space = trained_space(ckpt, obj)
    g = space.gradient(space.tensors)
    gen = torch.Generator().manual_seed(0)
    v = {n: torch.randn(t.shape, generator=gen, dtype=torch.float64) for n, t in g.items()}

    def loss(step):
        space.evaluate({n: t + step * v[n] for n, t in space.tensors.items()})
        return obj.mean_loss()

    fd = (loss(1e-3) - loss(-1e-3)) / 2e-3
    assert fd == pytest.approx(sum(float((g[n] * v[n]).sum()) for n in g), rel=2e-3)


def test_a_subspace_run_has_no_adversarial_searches_in_z(tmp_path):
    """z is expanded without gradients: the trained space's adversarial searches are left
    out with the reason, its Gaussian ones run, and the merged space has all four."""
    ckpt, obj = trained_run(tmp_path, "lora", subspace=12)
    assert ckpt.subspace is not None and trained_space(ckpt, obj).gradient is None
    s = SearchSettings(depth=3, samples=2)
    out = flatness_of(ckpt, obj, base_values(ckpt, obj), m=N, settings=s)
    trained = out["trained"]
    assert set(trained.searches) == {"gaussian", "gaussian_magnitude"}
    assert set(trained.unavailable) == {"adversarial", "adversarial_magnitude"}
    assert "subspace" in trained.unavailable["adversarial"]
    assert trained.coordinates == 12 and set(out["merged"].searches) == set(KINDS)


def test_the_model_is_left_as_found(lora_run):
    ckpt, (x, y) = lora_run
    obj = mlp_objective(ckpt, x, y)
    model = obj.model
    model.fc1.train()
    model.fc2.weight.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grad = model.classifier.weight.grad
    rng = torch.get_rng_state()
    s = SearchSettings(depth=4, samples=2)
    flatness_of(ckpt, obj, base_values(ckpt, obj), m=N, settings=s)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.classifier.weight.grad is grad and bool((grad == 0.5).all())
    assert torch.equal(torch.get_rng_state(), rng)


def test_report_end_to_end(lora_run, tmp_path):
    ckpt, (x, y) = lora_run
    opts = ReportOptions(parts=("sharpness",), sharpness_samples=4, sharpness_starts=2, seed=2)
    m = measure_checkpoint(ckpt, task=ToyTask(x, y), options=opts, n_train=N)
    assert "sharpness" not in m.skipped, m.skipped
    r = m.results["sharpness"]
    assert r.examples == N and r.n_train == N and set(r.spaces) == {"merged", "trained"}
    doc = json.loads((write_report(ckpt, tmp_path / "rep", m) / "report.json").read_text())
    sh = doc["sharpness"]
    assert sh["examples"] == N and sh["sample"]["examples"] == N
    obj = mlp_objective(ckpt, x, y)
    for name, sp in r.spaces.items():
        js = sh["spaces"][name]
        assert js["base_error"] == sp.base_error == float(np.mean(
            obj.model(x).argmax(1).numpy() != y.numpy()
        ))  # fmt: skip
        assert js["coordinates"] == sp.coordinates
        for kind, s in sp.searches.items():
            j = js["searches"][kind]
            assert j["scale"] == s.scale and j["inverse_square"] == 1 / s.scale**2
            assert [j["lower"], j["upper"], j["rise"], j["converged"]] == [
                s.lower, s.upper, s.rise, s.converged
            ]  # fmt: skip
            assert j["settings"]["depth"] == 12 and j["settings"]["target"] == 0.1
            want = 2 if kind.startswith("adversarial") else 4
            assert j["settings"]["samples"] == want
        sigma = js["searches"]["gaussian"]["scale"]
        assert js["pacbayes"] == pytest.approx(
            js["sq_distance"] / (4 * sigma**2) + math.log(N / sigma) + 10, rel=1e-12
        )
        assert js["pacbayes_normalised"] == pytest.approx(math.sqrt(js["pacbayes"] / N), rel=1e-12)
    merged = r.spaces["merged"]
    assert all(s.converged for s in merged.searches.values()), merged.searches
    dw2 = sum(float(u.delta(torch.float64).square().sum()) for u in ckpt.updates.values())
    assert merged.sq_distance == pytest.approx(dw2, rel=1e-5)  # the float32 model's W - W0
    scalars = dict(sweep_scalars())
    got = {n: scalars[n].read(doc) for n in get_measure("sharpness").scalars}
    assert got == {
        "pacbayes_flatness": merged.searches["gaussian"].inverse_square,
        "pacbayes_mag_flatness": merged.searches["gaussian_magnitude"].inverse_square,
        "sharpness_flatness": merged.searches["adversarial"].inverse_square,
        "sharpness_mag_flatness": merged.searches["adversarial_magnitude"].inverse_square,
        "pacbayes_init": merged.pacbayes_normalised,
        "pacbayes_mag_init": merged.pacbayes_magnitude_normalised,
    }
    assert all(scalars[n].larger_gap is True for n in got)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Flatness and sharpness (Jiang et al. 2020)" in md
    assert md.count("| search | scale | 1/scale^2 |") == 2 and md.count("| converged |") == 8
    assert "(one draw)" not in md and "Perturbing the merged weights, the train 0-1 error" in md
    # an unconverged search is left out of the sweep
    doc["sharpness"]["spaces"]["merged"]["searches"]["gaussian"]["converged"] = False
    assert scalars["pacbayes_flatness"].read(doc) is None
    assert scalars["pacbayes_init"].read(doc) is None
