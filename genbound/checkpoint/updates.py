"""Weight updates dW of one tensor of the base model.

Conventions (all update types):

* ``shape`` is the update's shape in math orientation: ``(n, m)`` = (outputs,
  inputs) for a matrix, so that the layer computes ``y = (W0 + dW) x``. A tensor
  stored the other way round (Hugging Face ``Conv1D``, PEFT ``fan_in_fan_out``,
  embedding tables, which map a one-hot of the vocabulary to the hidden size) has
  ``transposed=True``: ``delta(stored=True)`` gives it in the stored orientation.
* Vectors (biases, norm weights) have ``shape == (n,)``; their "singular value" is
  their Euclidean norm (an n x 1 matrix).
* ``singular_values()`` returns float64 numpy arrays in descending order, of length
  ``min(n, m, rank)`` where ``rank`` is the structural rank bound of the update.
* A tensor that the base model does not have (a new classification head) has
  ``W0 = 0`` by convention and ``is_new=True``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.checkpoint.base import BaseModel

Loader = Callable[[], torch.Tensor]


@dataclass(frozen=True, eq=False, kw_only=True)
class Update(ABC):
    """The update of one base tensor.

    Attributes:
        name: the module path (``encoder.layer.0.attention.self.query``) for a
            module's weight; the full tensor name for any other tensor (``....bias``).
        param: the tensor's name in the base model's state dict.
        shape: ``(n, m)`` outputs x inputs (math orientation), or ``(n,)``.
        transposed: True when the stored base tensor is ``(m, n)``.
        base: the base model, for updates that need W0 (DoRA, replaced tensors)
            and for base-relative measures; None when unavailable.
    """

    kind: ClassVar[str]
    name: str
    param: str
    shape: tuple[int, ...]
    transposed: bool = False
    base: BaseModel | None = field(default=None, repr=False)

    # -- structure ------------------------------------------------------------
    @property
    @abstractmethod
    def factors(self) -> dict[str, torch.Tensor]:
        """The stored tensors that define dW (B, A, indices, magnitude, ...)."""

    @property
    @abstractmethod
    def num_trainable(self) -> int:
        """Scalars that were trained to produce this update."""

    @property
    def rank(self) -> int:
        """Structural rank bound of dW (min(n, m) for dense updates)."""
        return min(self.shape) if len(self.shape) == 2 else 1

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    @property
    def is_new(self) -> bool:
        return False

    # -- values ---------------------------------------------------------------
    @abstractmethod
    def _delta64(self) -> torch.Tensor:
        """dW in float64, math orientation."""

    def delta(self, dtype: torch.dtype = torch.float32, *, stored: bool = False) -> torch.Tensor:
        """The dense dW (computed in float64, returned as ``dtype``).

        ``stored=True`` returns it in the base tensor's stored orientation, ready to
        add to the stored weight.
        """
        d = self._delta64()
        if stored and self.transposed:
            d = d.T.contiguous()
        return d.to(dtype)

    def singular_values(self) -> np.ndarray:
        """Singular values of dW, float64, descending (see module docstring)."""
        if not self.is_matrix:
            return np.array([float(torch.linalg.vector_norm(self._delta64()))])
        return dense_singular_values(self._delta64())

    def spectral_norm(self) -> float:
        """||dW||_2 (largest singular value)."""
        s = self.singular_values()
        return float(s[0]) if s.size else 0.0

    def base_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W0 in math orientation (zeros for a tensor new to the model)."""
        if self.base is None:
            raise GenboundError(
                f"update {self.name!r} needs the base model's weight {self.param!r}, "
                "but no base model is known; pass --base PATH (or base= to load_checkpoint)."
            )
        w = self.base.tensor(self.param)
        if self.transposed:
            w = w.T
        return w.to(dtype)


def dense_singular_values(x: torch.Tensor) -> np.ndarray:
    """Singular values of a dense matrix (float64, descending), wide matrices transposed."""
    a = x.detach().to(torch.float64).cpu().numpy()
    if a.shape[0] < a.shape[1]:
        a = a.T
    if a.size == 0:
        return np.zeros(0)
    return np.linalg.svd(a, compute_uv=False)


def lowrank_singular_values(B: torch.Tensor, A: torch.Tensor, scale: float) -> np.ndarray:
    """Singular values of ``scale * B @ A`` from the QR factors of B and A^T.

    B is n x r, A is r x m. With B = Q_B R_B and A^T = Q_A R_A, the product is
    Q_B (R_B R_A^T) Q_A^T, whose singular values are those of the small core.
    """
    _, rb = torch.linalg.qr(B.detach().to(torch.float64))
    _, ra = torch.linalg.qr(A.detach().to(torch.float64).T)
    core = rb @ ra.T
    s = torch.linalg.svdvals(core).numpy() * abs(float(scale))
    return s[: min(B.shape[0], A.shape[1], B.shape[1])]


@dataclass(frozen=True, eq=False, kw_only=True)
class LowRankUpdate(Update):
    """dW = scale * B @ A with B (n x r) and A (r x m): LoRA, LoRA+, Asym-LoRA, RAC links."""

    kind: ClassVar[str] = "lowrank"
    B: torch.Tensor
    A: torch.Tensor
    scale: float
    trained: tuple[str, ...] = ("A", "B")

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B, "A": self.A}

    @property
    def num_trainable(self) -> int:
        return sum(self.factors[f].numel() for f in self.trained)

    @property
    def rank(self) -> int:
        return min(self.B.shape[1], *self.shape)

    def _delta64(self) -> torch.Tensor:
        return self.scale * (self.B.to(torch.float64) @ self.A.to(torch.float64))

    def singular_values(self) -> np.ndarray:
        return lowrank_singular_values(self.B, self.A, self.scale)


@dataclass(frozen=True, eq=False, kw_only=True)
class SelectorUpdate(Update):
    """dW[:, indices] = scale * B: cLA, random-cLA, c3LA links, PaCA columns.

    A = E^T is a selector (rows of the identity), never stored densely: B (n x r),
    ``indices`` (r,) int64 input columns. Repeated indices add.
    """

    kind: ClassVar[str] = "selector"
    B: torch.Tensor
    indices: torch.Tensor
    scale: float = 1.0
    trained: tuple[str, ...] = ("B",)

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B, "indices": self.indices}

    @property
    def num_trainable(self) -> int:
        return self.B.numel() if "B" in self.trained else 0

    @property
    def rank(self) -> int:
        return min(int(torch.unique(self.indices).numel()), self.shape[0])

    def selector_matrix(self) -> torch.Tensor:
        """A = E^T as a dense (r x m) float64 matrix (for tests and small layers only)."""
        e = torch.zeros(self.indices.numel(), self.shape[1], dtype=torch.float64)
        e[torch.arange(self.indices.numel()), self.indices] = 1.0
        return e

    def _coalesced(self) -> torch.Tensor:
        """B with the columns of repeated indices summed: (n x unique(r))."""
        uniq, inverse = torch.unique(self.indices, return_inverse=True)
        out = torch.zeros(self.B.shape[0], uniq.numel(), dtype=torch.float64)
        out.index_add_(1, inverse, self.B.to(torch.float64))
        return out

    def _delta64(self) -> torch.Tensor:
        d = torch.zeros(self.shape, dtype=torch.float64)
        d.index_add_(1, self.indices, self.scale * self.B.to(torch.float64))
        return d

    def singular_values(self) -> np.ndarray:
        # The selected columns are orthonormal once coalesced: svd(dW) = |s| svd(B).
        return dense_singular_values(self._coalesced()) * abs(float(self.scale))


@dataclass(frozen=True, eq=False, kw_only=True)
class ChainUpdate(Update):
    """dW = sum of links (CoLA, RAC, c3LA): each link is a LowRank, Selector or Dense update."""

    kind: ClassVar[str] = "chain"
    links: tuple[Update, ...]

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {
            f"link{i}.{k}": v for i, link in enumerate(self.links) for k, v in link.factors.items()
        }

    @property
    def num_trainable(self) -> int:
        return sum(link.num_trainable for link in self.links)

    @property
    def rank(self) -> int:
        return min(sum(link.rank for link in self.links), *self.shape)

    def _delta64(self) -> torch.Tensor:
        total = torch.zeros(self.shape, dtype=torch.float64)
        for link in self.links:
            total += link._delta64()
        return total

    def stacked_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B_stack n x R, A_stack R x m) with dW = B_stack @ A_stack, or None if a link is dense."""
        bs, as_ = [], []
        for link in self.links:
            if isinstance(link, LowRankUpdate):
                bs.append(link.scale * link.B.to(torch.float64))
                as_.append(link.A.to(torch.float64))
            elif isinstance(link, SelectorUpdate):
                bs.append(link.scale * link.B.to(torch.float64))
                as_.append(link.selector_matrix())
            else:
                return None
        return torch.cat(bs, dim=1), torch.cat(as_, dim=0)

    def singular_values(self) -> np.ndarray:
        stacked = self.stacked_factors()
        if stacked is None:
            return dense_singular_values(self._delta64())
        return lowrank_singular_values(stacked[0], stacked[1], 1.0)


@dataclass(frozen=True, eq=False, kw_only=True)
class DenseUpdate(Update):
    """A dense update, read lazily: full fine-tuning, merged chains, saved modules, biases.

    ``value`` loads either dW itself (``reference is None and not relative``) or the
    fine-tuned tensor; dW is then ``value - reference`` (a given reference, e.g. the
    stored initial value of a new head) or ``value - W0`` from the base model
    (``relative=True``). Loaders return tensors in stored orientation.
    """

    kind: ClassVar[str] = "dense"
    value: Loader = field(repr=False)
    reference: Loader | None = field(default=None, repr=False)
    relative: bool = False
    new: bool = False
    trainable: int | None = None

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta(torch.float64)}

    @property
    def num_trainable(self) -> int:
        if self.trainable is not None:
            return self.trainable
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def is_new(self) -> bool:
        return self.new

    def _stored64(self, loader: Loader) -> torch.Tensor:
        t = loader().to(torch.float64)
        return t.T if self.transposed else t

    def _delta64(self) -> torch.Tensor:
        v = self._stored64(self.value)
        if self.reference is not None:
            return v - self._stored64(self.reference)
        if self.relative and not self.new:
            return v - self.base_weight(torch.float64)
        return v


@dataclass(frozen=True, eq=False, kw_only=True)
class DoraUpdate(Update):
    """DoRA: W = m * V / ||V|| with V = W0 + s B A and norms per output (rows of V).

    dW = diag(m / ||V||) V - W0 needs the base weight; it is not low rank.
    """

    kind: ClassVar[str] = "dora"
    lowrank: LowRankUpdate
    magnitude: torch.Tensor

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {**self.lowrank.factors, "magnitude": self.magnitude}

    @property
    def num_trainable(self) -> int:
        return self.lowrank.num_trainable + self.magnitude.numel()

    def _delta64(self) -> torch.Tensor:
        w0 = self.base_weight(torch.float64)
        v = w0 + self.lowrank._delta64()
        norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        return self.magnitude.to(torch.float64).reshape(-1, 1) / norms * v - w0
