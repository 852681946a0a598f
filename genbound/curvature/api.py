"""Entry points: top eigenvalues, trace and spectral density of an objective's Hessian."""

from __future__ import annotations

from collections.abc import Sequence

from genbound.curvature.algorithms import (
    DensityResult,
    EigenResult,
    TraceResult,
    hutchpp,
    lanczos,
    slq_density,
)
from genbound.curvature.operator import HessianOperator, MergedHessianOperator
from genbound.errors import GenboundError

Params = str | Sequence[str]


def hessian_operator(
    objective,
    params: Params = "trainable",
    *,
    parameterization: str = "factors",
    cache_graphs: bool = True,
) -> HessianOperator | MergedHessianOperator:
    """The Hessian operator in ``"factors"`` (the parameters as trained) or ``"merged"``
    (dW of each adapted layer, restricted to what the adapter reaches) coordinates."""
    if parameterization in ("factors", "params"):
        return HessianOperator(objective, params, cache_graphs=cache_graphs)
    if parameterization in ("merged", "dW"):
        return MergedHessianOperator(objective, params, cache_graphs=cache_graphs)
    raise GenboundError(
        f"Unknown parameterization {parameterization!r}; expected 'factors' (curvature in "
        f"the adapter's own coordinates, e.g. (A, B)) or 'merged' (with respect to each "
        f"adapted layer's merged update dW)."
    )


def top_eigenvalues(
    objective,
    k: int = 1,
    *,
    params: Params = "trainable",
    parameterization: str = "factors",
    tol: float = 1e-3,
    max_iter: int | None = None,
    value_tol: float | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    cache_graphs: bool = True,
) -> EigenResult:
    """Top-k Hessian eigenvalues of the objective's mean loss by Lanczos (see
    :func:`~genbound.curvature.algorithms.lanczos`); the model is left as found."""
    with hessian_operator(
        objective, params, parameterization=parameterization, cache_graphs=cache_graphs
    ) as op:
        return lanczos(
            op,
            k,
            tol=tol,
            max_iter=max_iter,
            value_tol=value_tol,
            seed=seed,
            return_vectors=return_vectors,
        )


def hessian_trace(
    objective,
    num_products: int = 30,
    *,
    params: Params = "trainable",
    parameterization: str = "factors",
    seed: int = 0,
    cache_graphs: bool = True,
) -> TraceResult:
    """Hessian trace by Hutch++ with a standard error; the model is left as found."""
    with hessian_operator(
        objective, params, parameterization=parameterization, cache_graphs=cache_graphs
    ) as op:
        return hutchpp(op, num_products, seed=seed)


def hessian_density(
    objective,
    num_probes: int = 4,
    num_steps: int = 30,
    *,
    params: Params = "trainable",
    parameterization: str = "factors",
    seed: int = 0,
    grid_size: int = 512,
    sigma: float | None = None,
    cache_graphs: bool = True,
) -> DensityResult:
    """Hessian spectral density by stochastic Lanczos quadrature; the model is left as found."""
    with hessian_operator(
        objective, params, parameterization=parameterization, cache_graphs=cache_graphs
    ) as op:
        return slq_density(op, num_probes, num_steps, seed=seed, grid_size=grid_size, sigma=sigma)
