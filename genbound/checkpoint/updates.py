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
  ``is_new=True`` and W0 = its recorded initial value (``DenseUpdate.reference``), or
  W0 = 0 when none was recorded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.linalg import (
    ThinSVD,
    coalesce_columns,
    dense_svd,
    dense_svdvals,
    lowrank_svd,
    lowrank_svdvals,
    selector_svd,
)

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
        return dense_svdvals(self._delta64())

    def svd(self) -> ThinSVD:
        """Thin SVD of dW (float64): U (n x rank), S, V (m x rank)."""
        return dense_svd(self._delta64())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """dW @ x for x (m x p), float64, without forming dW where factors exist."""
        return self._delta64() @ x.to(torch.float64)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        """dW^T @ y for y (n x p), float64."""
        return self._delta64().T @ y.to(torch.float64)

    def spectral_norm(self) -> float:
        """||dW||_2 (largest singular value)."""
        s = self.singular_values()
        return float(s[0]) if s.size else 0.0

    def base_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W0 in math orientation (zeros for a tensor new to the model)."""
        if self.is_new:
            return torch.zeros(self.shape, dtype=dtype)
        if self.base is None:
            raise GenboundError(
                f"update {self.name!r} needs the base model's weight {self.param!r}, "
                "but no base model is known; pass --base PATH (or base= to load_checkpoint)."
            )
        w = self.base.tensor(self.param)
        if self.transposed:
            w = w.T
        return w.to(dtype)


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
        return lowrank_svdvals(self.B, self.A, self.scale)

    def svd(self) -> ThinSVD:
        return lowrank_svd(self.B, self.A, self.scale)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (
            self.B.to(torch.float64) @ (self.A.to(torch.float64) @ x.to(torch.float64))
        )

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return self.scale * (
            self.A.to(torch.float64).T @ (self.B.to(torch.float64).T @ y.to(torch.float64))
        )


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

    def _delta64(self) -> torch.Tensor:
        d = torch.zeros(self.shape, dtype=torch.float64)
        d.index_add_(1, self.indices, self.scale * self.B.to(torch.float64))
        return d

    def singular_values(self) -> np.ndarray:
        # The selected columns are orthonormal once coalesced: svd(dW) = |s| svd(B).
        c, _ = coalesce_columns(self.B, self.indices)
        return dense_svdvals(c) * abs(float(self.scale))

    def svd(self) -> ThinSVD:
        return selector_svd(self.B, self.indices, self.shape[1], self.scale)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.B.to(torch.float64) @ x.to(torch.float64)[self.indices])

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.shape[1], y.shape[1], dtype=torch.float64)
        out.index_add_(
            0, self.indices, self.scale * (self.B.to(torch.float64).T @ y.to(torch.float64))
        )
        return out


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
        """(B_stack n x R, A_stack R x m) with dW = B_stack @ A_stack, or None if a link is dense.

        Selector links contribute rows of the identity to A_stack (R x m, small: R = k r).
        """
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

    def _selector_only(self) -> SelectorUpdate | None:
        """All links are selectors: the chain is one selector over the concatenated columns."""
        if not all(isinstance(x, SelectorUpdate) for x in self.links):
            return None
        b = torch.cat([x.scale * x.B.to(torch.float64) for x in self.links], dim=1)
        idx = torch.cat([x.indices for x in self.links])
        return SelectorUpdate(name=self.name, param=self.param, shape=self.shape, B=b, indices=idx)

    def singular_values(self) -> np.ndarray:
        sel = self._selector_only()
        if sel is not None:
            return sel.singular_values()
        stacked = self.stacked_factors()
        if stacked is None:
            return dense_svdvals(self._delta64())
        return lowrank_svdvals(stacked[0], stacked[1], 1.0)

    def svd(self) -> ThinSVD:
        sel = self._selector_only()
        if sel is not None:
            return sel.svd()
        stacked = self.stacked_factors()
        if stacked is None:
            return dense_svd(self._delta64())
        return lowrank_svd(stacked[0], stacked[1], 1.0)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return sum(link.matmul(x) for link in self.links)

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return sum(link.rmatmul(y) for link in self.links)


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

    def base_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W0: the recorded initial value when there is one (a new head), else as for any update."""
        if self.reference is not None:
            return self._stored64(self.reference).to(dtype)
        return super().base_weight(dtype)

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
