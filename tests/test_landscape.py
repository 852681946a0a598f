"""genbound.landscape against loss-landscapes' planar_interpolation and hand loops."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from genbound.adapters.lora import LoraLayer
from genbound.errors import GenboundError
from genbound.landscape import (
    evaluate_plane,
    filter_normalize,
    landscape_1d,
    landscape_2d,
    path_direction,
    pca_directions,
    random_directions,
)
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss


def lora_objective(seed=0, zero_b=False):
    torch.manual_seed(seed)
    X = torch.randn(90, 8)
    y = torch.randint(0, 3, (90,))
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3))
    g = torch.Generator().manual_seed(seed)
    model[0] = LoraLayer(model[0], rank=2, scale=0.5, generator=g)
    if not zero_b:
        with torch.no_grad():
            model[0].B.normal_(generator=g)
    batches = [Batch(X[:64], y[:64]), Batch(X[64:], y[64:])]
    return Objective(model, batches, cross_entropy_loss, ("0.B", "0.A")), X, y


def full_objective(seed=0):
    torch.manual_seed(seed)
    X = torch.randn(90, 8)
    y = torch.randint(0, 3, (90,))
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3))
    names = tuple(n for n, _ in model.named_parameters())
    return Objective(model, [Batch(X, y)], cross_entropy_loss, names), X, y


def hand_loss(model, X, y, theta, d1, d2, x, yy):
    ps = {n: theta[n] + x * d1.get(n, 0) + yy * d2.get(n, 0) for n in theta}
    with torch.no_grad():
        out = torch.func.functional_call(model, ps, (X,))
        return float(nn.functional.cross_entropy(out, y))


def test_plane_matches_planar_interpolation_and_hand_loop():
    from loss_landscapes.main import planar_interpolation
    from loss_landscapes.metrics import Loss

    obj, X, y = full_objective()
    model = obj.model
    gen = torch.Generator().manual_seed(1)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1 = {n: 0.5 * torch.randn(p.shape, generator=gen) for n, p in theta.items()}
    d2 = {n: 0.5 * torch.randn(p.shape, generator=gen) for n, p in theta.items()}
    steps = 7
    end1, end2 = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for n, p in end1.named_parameters():
            p.add_(d1[n])
        for n, p in end2.named_parameters():
            p.add_(d2[n])
    metric = Loss(nn.CrossEntropyLoss(), X, y)
    theirs = planar_interpolation(copy.deepcopy(model), end1, end2, metric, steps=steps)
    coords = np.arange(steps) / steps
    # planar_interpolation steps before it evaluates on even rows: there y = (j + 1) / steps
    shifted = np.arange(1, steps + 1) / steps
    for i in range(steps):
        ys = shifted if i % 2 == 0 else coords
        row = evaluate_plane(obj, d1, d2, coords[i : i + 1], ys)[0]
        np.testing.assert_allclose(row, theirs[i], atol=1e-5, rtol=0)
    ours = evaluate_plane(obj, d1, d2, coords, coords)
    hand = np.array([[hand_loss(model, X, y, theta, d1, d2, a, b) for b in coords] for a in coords])
    np.testing.assert_allclose(ours, hand, atol=1e-5, rtol=0)
    for n, p in model.named_parameters():
        assert torch.equal(p, theta[n])


def test_landscape_2d_given_directions_equals_hand_loop_over_batches():
    obj, X, y = lora_objective()
    theta = {n: p.detach().clone() for n, p in obj.model.named_parameters()}
    dirs = random_directions(obj, seed=3)
    land = landscape_2d(obj, directions=dirs, steps=5, extent=2.0)
    assert land.kind == "random-filter" and land.space == "adapter"
    d1, d2 = dirs.vectors
    for i, a in enumerate(land.xs):
        for j, b in enumerate(land.ys):
            ref = hand_loss(obj.model, X, y, theta, d1, d2, float(a), float(b))
            assert abs(land.losses[i, j] - ref) <= 1e-5
    assert land.centre_loss == pytest.approx(obj.mean_loss(), abs=1e-6)
    assert land.xs[2] == 0.0 and land.ys[2] == 0.0


def test_filter_normalisation_rows_and_biases():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    d = filter_normalize(torch.randn(5, 7, generator=g), w)
    torch.testing.assert_close(d.norm(dim=1), w.norm(dim=1))
    assert torch.equal(filter_normalize(torch.randn(5), torch.randn(5)), torch.zeros(5))
    dt = filter_normalize(torch.randn(7, 5, generator=g), w.T, rows_dim1=True)
    torch.testing.assert_close(dt.norm(dim=0), w.norm(dim=1))


def test_zero_b_adapter_space_is_zero_merged_space_is_not():
    obj, *_ = lora_objective(zero_b=True)
    dirs = random_directions(obj, space="adapter")
    assert torch.equal(dirs.vectors[0]["0.B"], torch.zeros(12, 2))
    assert any("zero" in n for n in dirs.notes)
    merged = random_directions(obj, space="merged")
    (name,) = [n for n in merged.vectors[0] if n.endswith("weight")]
    assert name == "0.base.weight"
    w = obj.model[0].base.weight.detach()
    torch.testing.assert_close(merged.vectors[0][name].norm(dim=1), w.norm(dim=1))
    full = random_directions(obj, space="full")
    assert torch.equal(full.vectors[0]["2.bias"], torch.zeros(3))


def test_path_direction_reaches_the_base_model():
    obj, X, y = lora_objective()
    land = landscape_1d(obj, kind="path", steps=21)
    assert land.kind == "path" and land.xs[0] == pytest.approx(-1.5) and land.xs[15] == 0.0
    base = copy.deepcopy(obj.model)
    with torch.no_grad():
        base[0].B.zero_()
        ref = float(nn.functional.cross_entropy(base(X), y))
    assert land.losses[5] == pytest.approx(ref, abs=1e-6)  # x = -1: dW = 0
    assert land.centre_loss == pytest.approx(obj.mean_loss(), abs=1e-6)
    merged = landscape_1d(obj, kind="path", space="merged", steps=21)
    np.testing.assert_allclose(merged.losses, land.losses, atol=1e-5)
    with pytest.raises(GenboundError):
        path_direction(lora_objective(zero_b=True)[0])
    with pytest.raises(GenboundError, match="4 k \\+ 1"):
        landscape_1d(obj, kind="path", steps=11)  # 0.2 spacing would miss x = 0
    small = landscape_1d(obj, kind="path", steps=9)
    assert list(small.xs[[2, 6]]) == [-1.0, 0.0]


def test_pca_path_is_projected_onto_the_plane():
    obj, *_ = lora_objective()
    B, A = obj.model[0].B.detach(), obj.model[0].A.detach()
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 2, generator=g), torch.randn(12, 2, generator=g)
    ab = [(1.0, 0.0), (0.5, 0.5), (0.2, -0.3), (0.0, 0.0)]
    snaps = [{"0.B": B + a * u + b * v, "0.A": A} for a, b in ab]
    dirs = pca_directions(obj, snaps)
    recon = torch.stack(
        [
            float(c[0]) * dirs.vectors[0]["0.B"] + float(c[1]) * dirs.vectors[1]["0.B"]
            for c in dirs.path
        ]
    )
    torch.testing.assert_close(recon, torch.stack([s["0.B"] - B for s in snaps]), atol=1e-5, rtol=0)
    assert sum(dirs.explained) == pytest.approx(1.0)
    land = landscape_2d(obj, kind="pca", snapshots=snaps, steps=5)
    assert land.path is not None and land.kind == "pca"
    assert land.xs[-1] >= np.abs(dirs.path[:, 0]).max()


def quadratic_objective():
    """loss = |w|^2 for every example: L(w + x d) = |w|^2 + 2 x w.d + x^2 |d|^2."""
    model = nn.Linear(3, 1, bias=False)

    def loss(m, batch):
        return (m.weight**2).sum().expand(len(batch))

    batch = Batch(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    return Objective(model, [batch], loss, ("weight",))


def test_summary_numbers_on_a_quadratic():
    obj = quadratic_objective()
    w = obj.model.weight.detach().clone()
    d = {"weight": torch.tensor([[0.0, 2.0, 0.0]])}
    land = landscape_1d(obj, directions=d, steps=11, extent=1.0, tol=0.5, rho=0.4)
    assert land.curvature[0] == pytest.approx(2 * 4.0, rel=1e-5)
    L0 = float((w**2).sum())
    expect = land.losses - L0
    assert land.flat_fraction == pytest.approx(float(np.mean(np.abs(expect) <= 0.5)))
    assert land.ascent == pytest.approx(4 * 0.16, rel=1e-5)  # the linear terms cancel
    d2 = {"weight": torch.tensor([[1.0, 0.0, 0.0]])}
    land2 = landscape_2d(obj, directions=[d, d2], steps=7, extent=1.0, rho=0.3)
    assert land2.curvature == pytest.approx((8.0, 2.0), rel=1e-5)


def test_odd_grid_required_and_save_plot(tmp_path):
    obj, *_ = lora_objective()
    with pytest.raises(GenboundError):
        landscape_2d(obj, steps=4)
    land = landscape_2d(obj, steps=5, seed=2)
    p = land.save_npz(tmp_path / "slice.npz")
    z = np.load(p)
    np.testing.assert_array_equal(z["losses"], land.losses)
    meta = json.loads(str(z["metadata"]))
    assert meta["space"] == "adapter" and meta["kind"] == "random-filter" and meta["seed"] == 2
    assert land.plot(tmp_path / "slice.png").stat().st_size > 0
    line = landscape_1d(obj, steps=5)
    assert line.plot(tmp_path / "line.png").stat().st_size > 0
