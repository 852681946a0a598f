"""Generalization bounds for fine-tuned checkpoints (data-free parts).

* :func:`mi_bound`: the mutual-information bound per adapter variant and its single-run
  (Occam) form, with D counted from the checkpoint and from the registry formula.
* :func:`bound_table`: the source paper's bound table for given layer shapes, extended.
* :func:`theorem1`: the corrected correction terms Phi_dW, Phi_W0 of the paper's
  Theorem 1 by an O(L) log-space recursion; :func:`theorem1_norms` reads the norms
  from a checkpoint.
* :func:`compression_bound`: the compression PAC-Bayes bound of Lotfi et al. (2022)
  with a Lloyd codebook and an arithmetic-coding length; :func:`kl_inverse`.
* :func:`gaussian_bound`: the Gaussian PAC-Bayes-kl certificate of a randomised predictor
  around the trained tensors (Dziugaite & Roy 2017); :func:`gaussian_bound_on` measures it
  on a training objective.

Every result is a frozen dataclass carrying its inputs, the assumptions it rests on,
a ``vacuous`` flag where a bound can exceed its range, and warnings.
"""

from genbound.bounds.compression import (
    CODEBOOK_MODES,
    CodeLength,
    CompressionBoundResult,
    CompressionCandidate,
    PartCode,
    Quantization,
    code_length,
    compression_bound,
    kt_code_length_bits,
    lloyd_codebook,
    pac_bayes_kl_bound,
    quantize,
    trainable_tensors,
)
from genbound.bounds.gaussian import (
    GaussianBoundResult,
    GaussianChoice,
    gaussian_bound,
    gaussian_bound_on,
    gaussian_kl,
)
from genbound.bounds.kl import binary_kl, kl_inverse
from genbound.bounds.mi import (
    LOSSES,
    LayerCount,
    LossSpec,
    MIBoundResult,
    layer_counts,
    loss_spec,
    mi_bound,
    mi_bound_value,
    occam_bound_value,
)
from genbound.bounds.table import (
    EXTENSION_VARIANTS,
    PAPER_VARIANTS,
    BoundRow,
    BoundTable,
    bound_table,
)
from genbound.bounds.theorem1 import (
    TRANSFORMER_CAVEAT,
    Theorem1Norms,
    Theorem1Result,
    order_layers,
    theorem1,
    theorem1_from_checkpoint,
    theorem1_norms,
)

__all__ = [
    "CODEBOOK_MODES",
    "EXTENSION_VARIANTS",
    "LOSSES",
    "PAPER_VARIANTS",
    "TRANSFORMER_CAVEAT",
    "BoundRow",
    "BoundTable",
    "CodeLength",
    "CompressionBoundResult",
    "CompressionCandidate",
    "GaussianBoundResult",
    "GaussianChoice",
    "LayerCount",
    "LossSpec",
    "MIBoundResult",
    "PartCode",
    "Quantization",
    "Theorem1Norms",
    "Theorem1Result",
    "binary_kl",
    "bound_table",
    "code_length",
    "compression_bound",
    "gaussian_bound",
    "gaussian_bound_on",
    "gaussian_kl",
    "kl_inverse",
    "kt_code_length_bits",
    "layer_counts",
    "lloyd_codebook",
    "loss_spec",
    "mi_bound",
    "mi_bound_value",
    "occam_bound_value",
    "order_layers",
    "pac_bayes_kl_bound",
    "quantize",
    "theorem1",
    "theorem1_from_checkpoint",
    "theorem1_norms",
    "trainable_tensors",
]
