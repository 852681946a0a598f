"""Spectral algorithms over a symmetric operator: Lanczos, Hutch++ and SLQ density.

An operator has ``size``, ``matvec(v)`` / ``matmat(V)`` on float64 vectors, ``project(V)``
(its domain; identity for plain parameters) and ``num_products``. Every random draw uses
a private ``torch.Generator`` seeded by ``seed``, never the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

#: A trace estimate is ``reliable`` when its standard error is at most this fraction of its
#: absolute value (zero then lies at least 4 standard errors away). Above it the estimate
#: is noise around an unresolved value and reports say so.
RELIABLE_RELATIVE_STDERR = 0.25
#: ... and when it rests on at least this many random samples: the standard error of the
#: mean of two samples is itself too uncertain to say that anything is resolved.
MIN_TRACE_SAMPLES = 3


def resolves(value: float, stderr: float, num_samples: int, *, exact: bool = False) -> bool:
    """Whether an estimate resolves its value: exact, or at least ``MIN_TRACE_SAMPLES``
    samples with ``relative_stderr(value, stderr) <= RELIABLE_RELATIVE_STDERR``."""
    if exact:
        return True
    return (
        num_samples >= MIN_TRACE_SAMPLES
        and relative_stderr(value, stderr) <= RELIABLE_RELATIVE_STDERR
    )


def relative_stderr(value: float, stderr: float) -> float:
    """stderr / |value| (0 for an exact zero, inf for a noisy zero or an unknown error)."""
    if not math.isfinite(stderr):
        return float("inf")
    if value == 0.0:
        return 0.0 if stderr == 0.0 else float("inf")
    return stderr / abs(value)


@dataclass(frozen=True)
class EigenResult:
    """Top-k eigenvalues (largest algebraic first) of the Hessian.

    Attributes:
        eigenvalues: (k,) float64, descending.
        residuals: (k,) ||H y - theta y|| / |theta| of each Ritz pair.
        value_bounds: (k,) bound on each eigenvalue's relative error,
            min(||r||, ||r||^2 / gap) / |theta| (gap: distance to the nearest other Ritz
            value; the quadratic bound of Kato-Temple type).
        converged: every residual <= tol (or, with ``value_tol``, every value bound <=
            value_tol).
        tol: the residual tolerance.
        value_tol: the eigenvalue tolerance, when one was asked for.
        iterations: Lanczos steps (= Hessian-vector products).
        num_products: products the estimate used.
        seed: seed of the starting vector.
        parameterization: ``"factors (A, B)"`` or ``"merged dW"``.
        params: which parameters (``"trainable"``, ``"all"``, patterns).
        dimension: dimension of the space (the tangent space for merged dW).
        vectors: (size x k) Ritz vectors (float64), when asked for.
        notes: anything skipped.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: bool
    tol: float
    iterations: int
    num_products: int
    seed: int
    parameterization: str = ""
    params: str = ""
    dimension: int = 0
    vectors: torch.Tensor | None = None
    notes: tuple[str, ...] = ()
    value_bounds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    value_tol: float | None = None


@dataclass(frozen=True)
class TraceResult:
    """Trace estimate by Hutch++ with its standard error.

    Attributes:
        trace: the estimate.
        stderr: standard error of the Hutchinson part (the sketch part is exact); inf when
            a single residual sample leaves it unknown.
        sketch_trace: tr(Q^T H Q) of the low-rank part.
        num_products, seed, parameterization, params, dimension, notes: as in EigenResult.
        samples: the residual Hutchinson samples.
        relative_stderr: stderr / |trace| (see :func:`relative_stderr`).
        reliable: the estimate resolves the trace (see :func:`resolves`: exact, or
            relative_stderr <= ``RELIABLE_RELATIVE_STDERR`` over at least
            ``MIN_TRACE_SAMPLES`` residual samples); False: take more products.
    """

    trace: float
    stderr: float
    sketch_trace: float
    num_products: int
    seed: int
    parameterization: str = ""
    params: str = ""
    dimension: int = 0
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: tuple[str, ...] = ()
    relative_stderr: float = float("inf")
    reliable: bool = False


@dataclass(frozen=True)
class DensityResult:
    """Spectral density by stochastic Lanczos quadrature.

    Attributes:
        nodes: (probes, steps) Ritz values per probe.
        weights: (probes, steps) quadrature weights per probe (each row sums to 1).
        grid: (G,) eigenvalue grid; density: (G,) Gaussian-broadened density on it
            (integrates to 1); sigma: the broadening.
        trace: the SLQ trace estimate, the mean of ``trace_samples``.
        num_products, seed, parameterization, params, dimension, notes: as in EigenResult.
        trace_samples: (probes,) ||z||^2 sum(weights * nodes) per probe z (the Rademacher
            vector in the operator's domain before normalisation), which is z^T H z: each
            is an unbiased Hutchinson sample of the trace.
        trace_stderr: standard error of their mean (inf with one probe: unknown).
        trace_relative_stderr, trace_reliable: as ``relative_stderr`` and ``reliable`` of
            :class:`TraceResult`.
    """

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    trace: float
    num_products: int
    seed: int
    parameterization: str = ""
    params: str = ""
    dimension: int = 0
    notes: tuple[str, ...] = ()
    trace_samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trace_stderr: float = float("inf")
    trace_relative_stderr: float = float("inf")
    trace_reliable: bool = False


def _mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (inf for fewer than two samples)."""
    mean = float(samples.mean()) if samples.size else 0.0
    if samples.size < 2:
        return mean, float("inf")
    return mean, float(samples.std(ddof=1) / math.sqrt(samples.size))


def _unit(op, gen: torch.Generator) -> torch.Tensor:
    v = op.project(torch.randn(op.size, 1, generator=gen, dtype=torch.float64))[:, 0]
    return v / torch.linalg.vector_norm(v)


def _rademacher(op, p: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randint(0, 2, (op.size, p), generator=gen, dtype=torch.int64)
    return op.project(z.to(torch.float64) * 2 - 1)


def lanczos_tridiagonal(op, v0: torch.Tensor, steps: int, *, keep_basis: bool = True, check=None):
    """Lanczos with full reorthogonalisation from the unit vector v0.

    Returns (alpha, beta, Q): T has diagonal alpha (j,) and off-diagonal beta[:j-1];
    beta[j-1] is the residual coupling of the last step; Q (size x j) the basis.
    ``check(alpha, beta)`` after each step may return True to stop early.
    """
    alpha: list[float] = []
    beta: list[float] = []
    dim = getattr(op, "dimension", op.size)
    n = min(steps, dim)
    # the basis grows in place, one column per step (no copy of the whole basis per step:
    # vectors can be millions long, e.g. merged-dW coordinates)
    q = torch.empty((n, v0.numel()), dtype=v0.dtype, device=v0.device)
    q[0] = v0
    for j in range(n):
        w = op.matvec(q[j])
        a = float(w @ q[j])
        alpha.append(a)
        basis = q[: j + 1]  # rows: the basis vectors so far
        w = w - basis.T @ (basis @ w)  # full reorthogonalisation, twice
        w = w - basis.T @ (basis @ w)
        b = float(torch.linalg.vector_norm(w))
        beta.append(b)
        if check is not None and check(alpha, beta):
            break
        if b <= 1e-12 * max(abs(a), 1e-300) or j + 1 >= n:
            break
        q[j + 1] = w / b
    basis = q[: len(alpha)].T if keep_basis else None
    return np.array(alpha), np.array(beta), basis


def _tridiag(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    j = len(alpha)
    t = np.diag(alpha)
    if j > 1:
        t += np.diag(beta[: j - 1], 1) + np.diag(beta[: j - 1], -1)
    return t


def _ritz(alpha, beta, k):
    """Top-k Ritz values, relative residuals, eigenvectors of T and relative value bounds."""
    evals, evecs = np.linalg.eigh(_tridiag(np.asarray(alpha), np.asarray(beta)))
    order = np.argsort(evals)[::-1][:k]
    theta = evals[order]
    res_abs = np.abs(beta[len(alpha) - 1] * evecs[-1, order])
    scale = np.maximum(np.abs(theta), 1e-300)
    if len(evals) > 1:
        others = np.abs(evals[None, :] - theta[:, None])
        others[np.arange(len(order)), order] = np.inf
        gap = others.min(axis=1)
        bound = np.minimum(res_abs, res_abs**2 / np.maximum(gap, 1e-300))
    else:
        bound = res_abs
    return theta, res_abs / scale, evecs[:, order], bound / scale


def lanczos(
    op,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_iter: int | None = None,
    min_iter: int | None = None,
    value_tol: float | None = None,
    seed: int = 0,
    return_vectors: bool = False,
) -> EigenResult:
    """Top-k (largest algebraic) eigenpairs of a symmetric operator by Lanczos.

    Iterates until every top-k Ritz pair has relative residual ||H y - theta y|| / |theta|
    <= tol, or ``max_iter`` steps (default min(dimension, max(100, 10 k))). At least
    ``min_iter`` steps (default k + 2) are taken: a Krylov space of 2 vectors is never
    reported as converged unless it is invariant. With ``value_tol`` the stopping rule is
    instead on the eigenvalues: every top-k value's relative error bound
    min(||r||, ||r||^2 / gap) / |theta| <= value_tol (the gap to the nearest other Ritz
    value stands in for the true gap, as usual).
    """
    dim = getattr(op, "dimension", op.size)
    k = max(1, min(int(k), dim))
    max_iter = min(dim, max_iter if max_iter is not None else max(100, 10 * k))
    min_iter = min(max_iter, min_iter if min_iter is not None else k + 2)
    gen = torch.Generator().manual_seed(int(seed))
    start = op.num_products

    def check(alpha, beta):
        if len(alpha) < min_iter:
            return False
        _, res, _, bound = _ritz(alpha, beta, k)
        if value_tol is not None:
            return bool(np.all(bound <= value_tol))
        return bool(np.all(res <= tol))

    alpha, beta, basis = lanczos_tridiagonal(
        op, _unit(op, gen), max_iter, keep_basis=True, check=check
    )
    theta, res, s, bound = _ritz(alpha, beta, k)
    ok = np.all(bound <= value_tol) if value_tol is not None else np.all(res <= tol)
    invariant = beta[-1] <= 1e-12 * max(np.max(np.abs(alpha)), 1e-300)
    vecs = basis @ torch.from_numpy(s) if return_vectors else None
    return EigenResult(
        eigenvalues=theta,
        residuals=res,
        converged=bool(ok or invariant or len(alpha) >= dim),
        tol=tol,
        iterations=len(alpha),
        num_products=op.num_products - start,
        seed=int(seed),
        parameterization=getattr(op, "parameterization", ""),
        params=getattr(op, "params_description", ""),
        dimension=dim,
        vectors=vecs,
        notes=tuple(getattr(op, "skipped", ())),
        value_bounds=bound,
        value_tol=value_tol,
    )


def hutchpp(op, num_products: int = 30, *, seed: int = 0) -> TraceResult:
    """Trace by Hutch++ (Meyer et al. 2021) with ``num_products`` products.

    A third of the budget sketches Q = orth(H S), a third gives tr(Q^T H Q) exactly, the
    rest estimates the trace of the deflated operator with Rademacher probes
    (I - Q Q^T) g; the standard error is that of their mean. Needs num_products >= 3.
    The result says whether the standard error resolves the value (``reliable``).
    """
    m = max(3, int(num_products))
    s = m // 3
    h = m - 2 * s
    gen = torch.Generator().manual_seed(int(seed))
    start = op.num_products
    S = _rademacher(op, s, gen)
    Q, _ = torch.linalg.qr(op.matmat(S))
    Q = op.project(Q)
    sketch = float(torch.trace(Q.T @ op.matmat(Q)))
    G = _rademacher(op, h, gen)
    G = G - Q @ (Q.T @ G)
    exact = Q.shape[1] >= getattr(op, "dimension", op.size)
    if exact:  # the sketch spans the whole domain: tr(Q^T H Q) is the trace, exactly
        samples, rest, stderr = np.zeros(0), 0.0, 0.0
    else:
        samples = (G * op.matmat(G)).sum(dim=0).numpy()
        rest, stderr = _mean_stderr(samples)
    rel = relative_stderr(sketch + rest, stderr)
    return TraceResult(
        trace=sketch + rest,
        stderr=stderr,
        sketch_trace=sketch,
        num_products=op.num_products - start,
        seed=int(seed),
        parameterization=getattr(op, "parameterization", ""),
        params=getattr(op, "params_description", ""),
        dimension=getattr(op, "dimension", op.size),
        samples=samples,
        notes=tuple(getattr(op, "skipped", ())),
        relative_stderr=rel,
        reliable=resolves(sketch + rest, stderr, samples.size, exact=exact),
    )


def slq_density(
    op,
    num_probes: int = 4,
    num_steps: int = 30,
    *,
    seed: int = 0,
    grid_size: int = 512,
    sigma: float | None = None,
) -> DensityResult:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each Rademacher probe (normalised, in the operator's domain) ``num_steps`` Lanczos
    steps give nodes (Ritz values) and weights (squared first components). The density on
    a grid spanning the nodes is their Gaussian broadening with ``sigma`` (default 1 % of
    the node range). Each probe also gives a Hutchinson sample of the trace,
    z^T H z = ||z||^2 e1^T T e1 (the quadrature sum of weights times nodes); their mean and
    its standard error are the SLQ trace.
    """
    gen = torch.Generator().manual_seed(int(seed))
    dim = getattr(op, "dimension", op.size)
    start = op.num_products
    nodes = np.full((num_probes, num_steps), np.nan)
    weights = np.zeros((num_probes, num_steps))
    norms2 = np.zeros(num_probes)
    for i in range(num_probes):
        z = _rademacher(op, 1, gen)[:, 0]
        norms2[i] = float(z @ z)
        z = z / math.sqrt(norms2[i])
        alpha, beta, _ = lanczos_tridiagonal(op, z, num_steps, keep_basis=False)
        evals, evecs = np.linalg.eigh(_tridiag(alpha, beta))
        nodes[i, : len(evals)] = evals
        weights[i, : len(evals)] = evecs[0] ** 2
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    width = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
    sigma = float(sigma) if sigma is not None else 0.01 * width
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    ok = np.isfinite(nodes)
    nd, wt = nodes[ok], weights[ok] / num_probes
    dens = (wt[None, :] * np.exp(-0.5 * ((grid[:, None] - nd[None, :]) / sigma) ** 2)).sum(1)
    dens /= sigma * math.sqrt(2 * math.pi)
    trace_samples = norms2 * (np.nan_to_num(nodes) * weights).sum(axis=1)
    trace, trace_stderr = _mean_stderr(trace_samples)
    rel = relative_stderr(trace, trace_stderr)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=dens,
        sigma=sigma,
        trace=trace,
        num_products=op.num_products - start,
        seed=int(seed),
        parameterization=getattr(op, "parameterization", ""),
        params=getattr(op, "params_description", ""),
        dimension=dim,
        notes=tuple(getattr(op, "skipped", ())),
        trace_samples=trace_samples,
        trace_stderr=trace_stderr,
        trace_relative_stderr=rel,
        trace_reliable=resolves(trace, trace_stderr, num_probes),
    )
