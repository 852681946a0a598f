"""Hessian spectra of an objective, restricted to what was trained.

``top_eigenvalues`` (Lanczos with residuals), ``hessian_trace`` (Hutch++ with a standard
error) and ``hessian_density`` (stochastic Lanczos quadrature, with its own trace and
standard error), in the adapter's own coordinates (``parameterization="factors"``) or
with respect to the merged update dW of each adapted layer (``"merged"``). Every result
says which, and each trace whether its standard error resolves it.
"""

from genbound.curvature.algorithms import (
    RELIABLE_RELATIVE_STDERR,
    DensityResult,
    EigenResult,
    TraceResult,
    hutchpp,
    lanczos,
    slq_density,
)
from genbound.curvature.api import hessian_density, hessian_operator, hessian_trace, top_eigenvalues
from genbound.curvature.context import analysis_mode, attention_settings
from genbound.curvature.operator import (
    FACTORS,
    MERGED,
    HessianOperator,
    MergedHessianOperator,
    find_adapted,
    select_parameters,
)

__all__ = [
    "FACTORS",
    "MERGED",
    "RELIABLE_RELATIVE_STDERR",
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "MergedHessianOperator",
    "TraceResult",
    "analysis_mode",
    "attention_settings",
    "find_adapted",
    "hessian_density",
    "hessian_operator",
    "hessian_trace",
    "hutchpp",
    "lanczos",
    "select_parameters",
    "slq_density",
    "top_eigenvalues",
]
