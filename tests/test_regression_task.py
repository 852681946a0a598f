"""A task that is not classification: a LoRA regressor scored by a squared error clipped at R.
The gap, the compression bound and the MI bound read the task's metric; every number is
checked against numpy (a float64 forward pass from the merged weights, closed forms).
Classification objectives give exactly the numbers they gave before metrics existed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import merged_from_genbound, np_kl_inverse
from safetensors.torch import load_file
from test_adapters import MLP, save_base
from torch import nn

import genbound.adapters as ga
from genbound import GenboundError, load_checkpoint
from genbound.bounds import mi_bound
from genbound.bounds.compression import compression_bound, with_trainable_tensors
from genbound.bounds.evaluated import compression_bound_on
from genbound.gap import empirical_gap, evaluate
from genbound.tasks import (
    Batch,
    Objective,
    classification,
    clipped_squared_error,
    cross_entropy_loss,
    loss_from,
    mean_predictor_error,
)
from genbound.tasks.protocol import Task
from genbound.tasks.rebuild import load_updates_into, resolve_parameter
from genbound.tasks.sampling import sample_objective
from genbound.train import fit

CLIP = 0.5  # R: the squared error is clipped at 0.5 (some examples are clipped)
N_TRAIN, N_TEST = 40, 30


class Regressor(nn.Module):
    """fc1: 6 -> 12, tanh, head: 12 -> 2 (two targets per example)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.fc1, self.head = nn.Linear(6, 12), nn.Linear(12, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.fc1(x)))


def regression_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN + N_TEST, 6, generator=g)
    w = torch.randn(6, 2, generator=g)
    y = torch.tanh(x @ w) + 0.4 * torch.randn(N_TRAIN + N_TEST, 2, generator=g)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


@dataclass(frozen=True, eq=False)
class RegressionTask:
    """The regressor rebuilt from a checkpoint, scored by the squared error clipped at R."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    batch_size: int = 16
    description: str = "a LoRA regressor on synthetic data"

    @property
    def n_train(self) -> int:
        return len(self.train[1])

    @property
    def metric(self):
        return clipped_squared_error(CLIP, chance=mean_predictor_error(self.train[1], CLIP))

    def objectives(self, checkpoint):
        model = load_updates_into(Regressor(), checkpoint).eval()
        names = {n for n, _ in model.named_parameters()}
        trainable = tuple(resolve_parameter(names, u.param) for u in checkpoint.updates.values())
        metric = self.metric

        def objective(data, split):
            x, y = data
            bs = self.batch_size
            batches = [Batch(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)]
            loss = loss_from(metric.loss)
            return Objective(model, batches, loss, trainable, f"regressor ({split})", metric=metric)

        return objective(self.train, "train"), objective(self.test, "test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, task, base state, trainable scalars of the live model)."""
    tmp = tmp_path_factory.mktemp("regression")
    train, test = regression_data()
    model = Regressor()
    base = save_base(model, tmp)
    handle = ga.apply(model, "lora", rank=2, targets=["fc1"], head=["head"], seed=0)
    d_live = sum(p.numel() for p in handle.model.parameters() if p.requires_grad)
    metric = clipped_squared_error(CLIP)
    res = fit(handle, train, None, epochs=3, lr=3e-2, batch_size=8, loss_fn=metric.loss)
    assert res.train_acc is None  # the outputs are not class logits
    run = handle.save(tmp / "run", base_model=base, n_train=N_TRAIN, metrics=res.metrics())
    ckpt = load_checkpoint(run)
    # the checkpoint is the trained model
    with torch.no_grad():
        live = handle.model(train[0]).numpy()
    assert np.allclose(forward_np(ckpt, load_file(base), train[0]), live, rtol=1e-5, atol=1e-6)
    return ckpt, RegressionTask(train, test), load_file(base), d_live


def forward_np(ckpt, base_state, x) -> np.ndarray:
    """The merged model's outputs in float64 numpy, from W0 + dW."""
    w = {k: v.numpy() for k, v in merged_from_genbound(ckpt, base_state).items()}
    h = np.tanh(x.double().numpy() @ w["fc1.weight"].T + w["fc1.bias"])
    return h @ w["head.weight"].T + w["head.bias"]


def clipped_sq_np(pred: np.ndarray, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(raw, clipped) per-example squared errors summed over the two targets."""
    raw = ((pred - y.double().numpy()) ** 2).sum(axis=1)
    return raw, np.minimum(raw, CLIP)


# -- the task and its metric ----------------------------------------------------------------


def test_a_regression_task_is_a_task_without_labels(trained):
    _, task, _, _ = trained
    assert isinstance(task, Task) and getattr(task, "num_labels", None) is None
    y = task.train[1].double().numpy()
    chance = np.minimum(((y - y.mean(axis=0)) ** 2).sum(axis=1), CLIP).mean()
    m = task.metric
    assert m.chance == pytest.approx(chance, rel=1e-12) and m.vacuous_at == m.chance
    assert (m.error_range, m.loss_range, m.unit, m.num_classes) == (CLIP, CLIP, "examples", None)
    assert m.loss_name == m.error_name == "squared error clipped at 0.5"
    assert m.mi_loss() == {
        "loss": "bounded",
        "loss_range": CLIP,
        "loss_description": "squared error clipped at 0.5",
    }


def test_gap_reads_the_metric(trained):
    ckpt, task, base_state, _ = trained
    tr, te = task.objectives(ckpt)
    (xtr, ytr), (xte, yte) = task.train, task.test
    raw_tr, ltr = clipped_sq_np(forward_np(ckpt, base_state, xtr), ytr)
    raw_te, lte = clipped_sq_np(forward_np(ckpt, base_state, xte), yte)
    assert (raw_tr > CLIP).any() and (raw_te > CLIP).any() and (raw_tr < CLIP).any()
    losses, errors = evaluate(tr)
    assert losses.dtype == errors.dtype == np.float64
    np.testing.assert_allclose(losses, ltr, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(losses, errors)  # loss and error are one function here
    gap = empirical_gap(tr, te)
    assert (gap.train.n, gap.test.n) == (N_TRAIN, N_TEST)
    assert gap.train.loss == pytest.approx(ltr.mean(), rel=1e-5)
    assert gap.test.error == pytest.approx(lte.mean(), rel=1e-5)
    assert gap.loss_gap == pytest.approx(lte.mean() - ltr.mean(), rel=1e-4, abs=1e-6)
    assert gap.error_gap == gap.loss_gap
    se = math.hypot(ltr.std(ddof=1) / math.sqrt(N_TRAIN), lte.std(ddof=1) / math.sqrt(N_TEST))
    assert gap.loss_gap_stderr == pytest.approx(se, rel=1e-4)
    assert gap.train.max_loss == pytest.approx(ltr.max(), rel=1e-6) and gap.test.max_loss <= CLIP
    assert (gap.loss_name, gap.error_name, gap.unit) == (
        "squared error clipped at 0.5",
        "squared error clipped at 0.5",
        "examples",
    )
    assert gap.error_range == CLIP and gap.chance == task.metric.chance
    assert gap.loss_unit == "squared target units"
    assert not tr.model.training


def test_compression_bound_reads_the_metric(trained):
    ckpt, task, base_state, _ = trained
    tr, _ = task.objectives(ckpt)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    res = compression_bound_on(ckpt, tr, bits=(1, 3), prune=False)
    assert all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters())
    n, delta = N_TRAIN, 0.05
    for cand in res.candidates:
        quantized = with_trainable_tensors(ckpt, cand.quantization.tensors())
        _, err = clipped_sq_np(forward_np(quantized, base_state, task.train[0]), task.train[1])
        assert cand.train_error == pytest.approx(err.mean(), rel=1e-5)
        rhs = (cand.code_bits * math.log(2) + math.log(2 * math.sqrt(n) / delta) + math.log(2)) / n
        assert cand.rhs == pytest.approx(rhs, rel=1e-14)
        # kl bound on error / R, scaled back; with zero error the closed form R (1 - e^-rhs)
        ref = CLIP * np_kl_inverse(cand.train_error / CLIP, rhs)
        assert cand.bound == pytest.approx(ref, rel=1e-9) and cand.bound <= CLIP
        assert cand.floor == pytest.approx(CLIP * -math.expm1(-rhs), rel=1e-12)
    assert res.bound == min(c.bound for c in res.candidates)
    assert (res.error_range, res.error_name) == (CLIP, "squared error clipped at 0.5")
    assert res.vacuous_at == res.chance == task.metric.chance
    assert res.vacuous == (res.bound >= task.metric.chance)
    assert any("Maurer" in a for a in res.assumptions)
    assert not any("judged against" in w for w in res.warnings)


def test_compression_bound_of_a_bounded_error_without_chance():
    t = {"w": torch.linspace(-1, 1, 50)}
    res = compression_bound(t, {2: 0.1}, 500, bits=(2,), error_range=CLIP, error_name="e")
    assert res.vacuous_at == CLIP and res.chance is None
    assert any("judged against the error range 0.5" in w for w in res.warnings)
    unit = compression_bound(t, {2: 0.1 / CLIP}, 500, bits=(2,))
    assert res.bound == CLIP * unit.bound and res.rhs == unit.rhs
    with pytest.raises(GenboundError, match=r"train e .* must lie in \[0, 0.5\]"):
        compression_bound(t, {2: 0.6}, 500, bits=(2,), error_range=CLIP, error_name="e")
    with pytest.raises(GenboundError, match="num_classes sets the chance level of a 0-1 error"):
        compression_bound(t, {2: 0.1}, 500, bits=(2,), error_range=CLIP, num_classes=3)
    with pytest.raises(GenboundError, match="chance must lie in"):
        compression_bound(t, {2: 0.1}, 500, bits=(2,), error_range=CLIP, chance=0.7)
    with pytest.raises(GenboundError, match="error_range"):
        compression_bound(t, {2: 0.1}, 500, bits=(2,), error_range=0)


def test_mi_bound_of_the_clipped_squared_error(trained):
    ckpt, task, _, d_live = trained
    res = mi_bound(ckpt, **task.metric.mi_loss())
    # D by hand: LoRA r=2 on fc1 (6 -> 12) plus the head (12 -> 2, with bias)
    d = 2 * (6 + 12) + 12 * 2 + 2
    assert res.d_actual == d == d_live and res.n_train == N_TRAIN and res.q == 32
    sigma = CLIP / 2
    assert res.loss.kind == "bounded" and res.loss.sigma == sigma
    assert res.loss.description == "squared error clipped at 0.5, values in [0, 0.5]"
    assert res.bound == pytest.approx(math.sqrt(2 * sigma**2 * 32 * math.log(2) * d / N_TRAIN))
    occam = CLIP * math.sqrt((32 * d * math.log(2) + math.log(1 / 0.05)) / (2 * N_TRAIN))
    assert res.occam_bound == pytest.approx(occam, rel=1e-14)
    assert res.vacuous == (res.bound > CLIP)
    assert not any("outside the loss range" in w for w in res.warnings)
    with pytest.raises(GenboundError, match="loss_description"):
        mi_bound(ckpt, loss="zero_one", loss_description="the 0-1 error")


def test_sample_of_continuous_targets_is_uniform_and_batching_free(trained):
    ckpt, task, _, _ = trained
    tr, _ = task.objectives(ckpt)
    sub, sample = sample_objective(tr, 10, seed=3)
    assert (sample.examples, sample.total, sample.stratified_by) == (10, N_TRAIN, None)
    assert sample.label_counts == {} and "uniform random sample (seed 3)" in sample.describe()

    def rows(objective):
        return sorted(x.numpy().tobytes() for b in objective.batches for x in b.inputs)

    # the same examples in other batches, in another order: the same sample
    x, y = task.train
    perm = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(5))
    other = [Batch(x[perm[i : i + 7]], y[perm[i : i + 7]]) for i in range(0, N_TRAIN, 7)]
    other_sub, _ = sample_objective(Objective(tr.model, other, tr.loss, tr.trainable), 10, seed=3)
    got = rows(sub)
    assert len(set(got)) == 10 and got == rows(other_sub)
    assert got != rows(sample_objective(tr, 10, seed=4)[0])
    assert sub.metric == tr.metric


# -- classification is what it was ----------------------------------------------------------


def classification_objective(metric=None):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(50, 32, generator=g), torch.randint(0, 3, (50,), generator=g)
    batches = [Batch(x[i : i + 16], y[i : i + 16]) for i in range(0, 50, 16)]
    kwargs = {} if metric is None else {"metric": metric}
    return Objective(MLP().eval(), batches, cross_entropy_loss, ("fc1.weight",), "mlp", **kwargs)


def test_classification_numbers_are_unchanged():
    obj = classification_objective()
    losses, errors = evaluate(obj)
    with torch.no_grad():
        ref = [
            (
                F.cross_entropy(obj.model(b.inputs).double(), b.labels, reduction="none"),
                (obj.model(b.inputs).argmax(dim=-1) != b.labels).double(),
            )
            for b in obj.batches
        ]
    assert np.array_equal(losses, torch.cat([r[0] for r in ref]).numpy())
    assert np.array_equal(errors, torch.cat([r[1] for r in ref]).numpy())
    for b in obj.batches:
        with torch.no_grad():
            direct = F.cross_entropy(obj.model(b.inputs), b.labels, reduction="none")
            assert torch.equal(cross_entropy_loss(obj.model, b), direct)
    gap = empirical_gap(obj, obj)
    assert (gap.loss_name, gap.error_name, gap.error_range, gap.chance, gap.unit) == (
        "cross-entropy",
        "0-1 error",
        1.0,
        None,
        "examples",
    )
    assert empirical_gap(*[classification_objective(classification(3))] * 2).chance == 1 - 1 / 3
    assert classification(3).mi_loss() == {"loss": "zero_one"}


def test_classification_metric_gives_the_num_classes_bound(tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    handle = ga.apply(model, "lora", rank=2, targets=["fc1"], seed=0)
    ckpt = load_checkpoint(handle.save(tmp_path / "run", base_model=base, n_train=50))
    batches = classification_objective().batches
    merged = load_updates_into(MLP(), ckpt).eval()
    unknown = Objective(merged, batches, cross_entropy_loss, ())
    known = Objective(merged, batches, cross_entropy_loss, (), metric=classification(3))
    by_count = compression_bound_on(ckpt, unknown, bits=(1, 2), num_classes=3)
    by_metric = compression_bound_on(ckpt, known, bits=(1, 2))
    fields = ("bound", "train_error", "vacuous_at", "vacuous", "warnings", "assumptions", "chance")
    assert [getattr(by_count, f) for f in fields] == [getattr(by_metric, f) for f in fields]
    assert by_metric.vacuous_at == by_metric.chance == 1 - 1 / 3
    assert by_metric.error_name == "0-1 error" and by_metric.error_range == 1.0
    plain = compression_bound_on(ckpt, unknown, bits=(1, 2))
    assert plain.vacuous_at == 1.0 and plain.chance is None
    assert (
        plain.warnings[0] == "vacuity judged against 1 (pass num_classes to judge against chance)"
    )
    assert mi_bound(ckpt, **classification(3).mi_loss()) == mi_bound(ckpt)


# -- conventions and errors -----------------------------------------------------------------


def test_fit_calls_forward_on_batches():
    x, y = regression_data()[0]
    seen = []

    def forward(model, batch):
        seen.append(type(batch))
        return model(batch.inputs["x"])

    batches = [Batch({"x": x[i : i + 10]}, y[i : i + 10]) for i in range(0, N_TRAIN, 10)]
    res = fit(
        Regressor(),
        batches,
        batches,
        epochs=1,
        lr=1e-2,
        forward=forward,
        loss_fn=clipped_squared_error(CLIP).loss,
    )
    assert set(seen) == {Batch} and res.test_acc is None and res.test_loss <= CLIP


def test_metric_errors():
    with pytest.raises(GenboundError, match="num_classes must be an integer >= 2"):
        classification(1)
    with pytest.raises(GenboundError, match="clip must be a finite number > 0"):
        clipped_squared_error(float("inf"))
    with pytest.raises(GenboundError, match=r"chance must be None or a number in \[0, 0.5\]"):
        clipped_squared_error(CLIP, chance=0.9)
    with pytest.raises(
        GenboundError, match=r"targets' shape \(4,\); found outputs of shape \(4, 1\)"
    ):
        clipped_squared_error(CLIP).loss(torch.zeros(4, 1), torch.zeros(4))
    (x, y), _ = regression_data()
    regressor = Objective(
        Regressor(), [Batch(x, y)], cross_entropy_loss, (), "r", metric=clipped_squared_error(CLIP)
    )
    with pytest.raises(GenboundError, match="scored by the same metric"):
        empirical_gap(regressor, classification_objective())
