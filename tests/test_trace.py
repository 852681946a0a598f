"""Hessian trace estimates against closed forms: Hutch++ and the SLQ trace cover the true
trace within their standard errors, Hutch++ is exact up to what its sketch misses, and a
trace the budget does not resolve is flagged as such in the result, report.json, the
warnings and the reading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_curvature import exact_hessian, mlp_objective

from genbound.curvature import hessian_density, hessian_trace
from genbound.curvature.algorithms import RELIABLE_RELATIVE_STDERR, hutchpp, slq_density
from genbound.report.measures import Measures, _curvature
from genbound.report.reading import reading_lines
from genbound.report.serialize import jsonable
from genbound.report.writer import curvature_json


class MatrixOperator:
    """The operator interface over a dense symmetric matrix Q diag(eigenvalues) Q^T."""

    def __init__(self, eigenvalues, seed: int = 0):
        lam = torch.as_tensor(np.asarray(eigenvalues), dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=gen, dtype=torch.float64))
        self.matrix = q @ torch.diag(lam) @ q.T
        self.trace = float(lam.sum())
        self.size = self.dimension = len(lam)
        self.num_products = 0

    def project(self, v):
        return v

    def matmat(self, v):
        self.num_products += v.shape[1]
        return self.matrix @ v

    def matvec(self, v):
        return self.matmat(v[:, None])[:, 0]


def within(value, truth, stderr, k=3.0):
    return abs(value - truth) <= k * stderr


def test_both_estimates_cover_a_known_psd_trace():
    lam = np.random.default_rng(0).uniform(0.5, 2.0, 200)
    for seed in range(8):
        op = MatrixOperator(lam, seed=seed)
        t = hutchpp(op, 30, seed=seed)
        d = slq_density(op, num_probes=20, num_steps=6, seed=seed)
        assert t.num_products == 30 and 0 < t.stderr < math.inf
        assert within(t.trace, op.trace, t.stderr) and t.reliable
        assert within(d.trace, op.trace, d.trace_stderr) and d.trace_reliable
        assert d.trace_samples.shape == (20,) and d.trace == pytest.approx(d.trace_samples.mean())
        # the two agree within their errors
        assert within(t.trace, d.trace, math.hypot(t.stderr, d.trace_stderr))


def test_hutchpp_is_exact_up_to_what_its_sketch_misses():
    rng = np.random.default_rng(1)
    spiked = np.concatenate([[1000.0, 700.0, 400.0], rng.uniform(0.0, 1.0, 197)])
    for seed in range(8):
        op = MatrixOperator(spiked, seed=seed)
        t = hutchpp(op, 30, seed=seed)
        d = slq_density(op, num_probes=30, num_steps=4, seed=seed)  # plain Hutchinson
        assert within(t.trace, op.trace, t.stderr) and within(d.trace, op.trace, d.trace_stderr)
        assert t.stderr < 0.05 * d.trace_stderr  # the spikes cost Hutchinson, not Hutch++
    low_rank = MatrixOperator(np.concatenate([[5.0, 3.0, 2.0], np.zeros(97)]), seed=2)
    t = hutchpp(low_rank, 12, seed=0)  # a sketch of 4 captures rank 3 exactly
    assert t.trace == pytest.approx(10.0, rel=1e-10) and t.stderr < 1e-10 and t.reliable


def test_a_trace_the_budget_does_not_resolve_is_flagged():
    rng = np.random.default_rng(2)
    half = rng.uniform(1.0, 10.0, 50)
    op = MatrixOperator(np.concatenate([half, -half + 1e-3]), seed=3)  # trace 0.05
    t = hutchpp(op, 6, seed=0)
    assert not t.reliable and t.relative_stderr > RELIABLE_RELATIVE_STDERR
    assert t.relative_stderr == pytest.approx(t.stderr / abs(t.trace))
    one = slq_density(op, num_probes=1, num_steps=5, seed=0)
    assert one.trace_stderr == math.inf and not one.trace_reliable
    few = slq_density(op, num_probes=4, num_steps=5, seed=0)
    assert not few.trace_reliable and few.trace_relative_stderr > RELIABLE_RELATIVE_STDERR


def test_two_samples_never_resolve_a_trace():
    """The standard error of two samples is too uncertain itself: whatever its size, the
    estimate is not called resolved (a third sample is needed)."""
    op = MatrixOperator(np.full(50, 2.0), seed=4)  # z^T H z = 2 ||z||^2 = 100 for every z
    two = slq_density(op, num_probes=2, num_steps=3, seed=0)
    assert two.trace == pytest.approx(100.0) and two.trace_stderr < 1e-9
    assert not two.trace_reliable
    three = slq_density(op, num_probes=3, num_steps=3, seed=0)
    assert three.trace_reliable
    wide = MatrixOperator(np.linspace(1.0, 3.0, 200), seed=5)
    assert not hutchpp(wide, 6, seed=0).reliable  # sketch 2, exact part 2, 2 residual samples
    assert hutchpp(wide, 7, seed=0).reliable  # 3 residual samples, a near-constant spectrum


def test_both_estimates_agree_with_the_exact_hessian_trace():
    obj, X, y = mlp_objective()
    exact = float(torch.trace(exact_hessian(obj.model, X, y, obj.trainable)))
    t = hessian_trace(obj, num_products=60, seed=1)
    d = hessian_density(obj, num_probes=20, num_steps=8, seed=1)
    assert within(t.trace, exact, t.stderr) and within(d.trace, exact, d.trace_stderr)
    assert within(t.trace, d.trace, math.hypot(t.stderr, d.trace_stderr))


def test_report_json_warnings_and_reading_say_when_the_trace_is_noise():
    obj, *_ = mlp_objective()
    noisy = _curvature(obj, "factors", 0, 3, 1, 5)  # one residual sample: unknown error
    assert not noisy.trace.reliable and noisy.trace.stderr == math.inf
    doc = json.loads(json.dumps(curvature_json(Measures(spectra=None, curvature=noisy))))
    assert doc["trace"]["reliable"] is False and doc["trace"]["relative_stderr"] == "inf"
    assert doc["density"]["trace_stderr"] == "inf" and doc["density"]["trace_reliable"] is False
    assert len(doc["density"]["trace_samples"]) == 1
    (line,) = [x for x in reading_lines(Measures(spectra=None, curvature=noisy)) if "Hessian" in x]
    assert "Neither estimate resolves the trace" in line and "not resolved" in line

    good = _curvature(obj, "factors", 0, 90, 20, 8)
    assert good.trace.reliable and good.density.trace_reliable
    assert jsonable(good.trace)["reliable"] is True
    (line,) = [x for x in reading_lines(Measures(spectra=None, curvature=good)) if "Hessian" in x]
    assert "resolve" not in line.replace("resolved", "") and "SLQ" in line


class ProjectedOperator(MatrixOperator):
    """H = B diag(eigenvalues) B^T on a 3-dimensional subspace of R^40 (basis B) that
    contains e_0, e_1 and the all-ones direction, so ||P z|| of a Rademacher z varies with
    z^T H z: the domain of a merged-dW operator, in miniature."""

    def __init__(self):
        n = 40
        basis = torch.zeros(n, 3, dtype=torch.float64)
        basis[0, 0] = basis[1, 1] = 1.0
        basis[:, 2] = 1.0
        self.basis, _ = torch.linalg.qr(basis)
        self.matrix = self.basis @ torch.diag(torch.tensor([1.0, 1.0, 10.0])).double()
        self.matrix = self.matrix @ self.basis.T
        self.trace = 12.0
        self.size, self.dimension, self.num_products = n, 3, 0

    def project(self, v):
        return self.basis @ (self.basis.T @ v)


def test_slq_trace_is_unbiased_on_a_projected_domain():
    """Each probe's sample is z^T H z with z the projected Rademacher vector; scaling the
    normalised quadrature by the dimension instead would give about 9.6 here."""
    d = slq_density(ProjectedOperator(), num_probes=2000, num_steps=3, seed=0)
    assert within(d.trace, 12.0, d.trace_stderr) and d.trace_stderr < 0.5
