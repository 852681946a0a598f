"""What every update kind of ``genbound.checkpoint.updates`` provides.

An :class:`Update` is the dW of one tensor of the base model. Each kind (a subclass that
sets ``kind``, registered when it is defined) says:

* its values: dW, its singular values and SVD, products with it (:meth:`Update.delta`...);
* what trained: :meth:`Update.trained_tensors` (what a code of the update must hold),
  :meth:`Update.frozen_tensors` (what the run's seed fixes), :meth:`Update.with_trained`
  (the update with other trained values, e.g. quantized);
* how an adapter layer holds it: :attr:`Update.factor_rank`, :attr:`Update.is_dense`,
  :attr:`Update.last_link` and :attr:`Update.earlier_links` (the adapter layer class that
  rebuilds a kind registers in :mod:`genbound.adapters.registry`);
* its manifest link: :meth:`Update.to_link` and :meth:`Update.from_link`
  (docs/checkpoint-format.md, "Link kinds").

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

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.linalg import ThinSVD, dense_svd, dense_svdvals

if TYPE_CHECKING:
    from genbound.checkpoint.base import BaseModel

Loader = Callable[[], torch.Tensor]

#: Joins the names of nested tensors: ``"link0::B"`` is the B of a chain's first link.
SEP = "::"

_KINDS: dict[str, type[Update]] = {}


def update_kinds() -> dict[str, type[Update]]:
    """Every update class by its ``kind`` (the manifest's link kinds), in definition order.

    A subclass of :class:`Update` that sets ``kind`` is added when it is defined."""
    return dict(_KINDS)


class LinkReader(Protocol):
    """What :meth:`Update.from_link` reads a manifest link with (the run folder's reader).

    Every method names ``where`` (the link's key path in the manifest) in its errors."""

    def field(self, spec: Mapping, key: str, where: str) -> Any:
        """``spec[key]``; an error naming the missing field when absent."""

    def tensor(self, spec: Mapping, key: str, where: str) -> torch.Tensor:
        """The tensor the field ``key`` names."""

    def lazy(self, spec: Mapping, key: str, where: str, shape: tuple[int, ...]) -> Loader:
        """A loader of the tensor ``key`` names, checked now to have ``shape`` and finite values."""

    def link(self, spec: Mapping, common: dict, where: str) -> Update:
        """The update of a nested link."""

    def expect(self, ok: bool, where: str, expected: str, found: str) -> None:
        """An error saying what was expected and found unless ``ok``."""


def nested(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix + SEP``, with that prefix removed."""
    head = prefix + SEP
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            if kind in _KINDS and _KINDS[kind].__qualname__ != cls.__qualname__:
                raise ValueError(f"update kind {kind!r} is defined twice")
            _KINDS[kind] = cls

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

    # -- what trained ---------------------------------------------------------
    @abstractmethod
    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that trained, by name (``"B"``, ``"A"``, ``"magnitude"``, ``"delta"``;
        ``"link0::B"`` for a chain's links): with W0, the run's seed and the frozen tensors,
        everything a decoder needs to rebuild dW."""

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        """Stored tensors that did not train (a random A, selector indices, VeRA's random
        projections): the run's seed fixes them, so a code of the update need not hold them."""
        return {}

    @abstractmethod
    def with_trained(self, tensors: Mapping[str, torch.Tensor]) -> Update:
        """A copy whose trained tensors are ``tensors`` (the keys of :meth:`trained_tensors`,
        e.g. quantized values); everything else, W0 included, as it is."""

    # -- as an adapter layer --------------------------------------------------
    @property
    def is_dense(self) -> bool:
        """True when dW is stored whole rather than as factors (full fine-tuning, a head)."""
        return False

    @property
    def factor_rank(self) -> int | None:
        """r of the variant's count formula: the inner dimension of the stored factors
        (None for a dense update)."""
        return None

    @property
    def last_link(self) -> Update:
        """The part of dW an adapter layer trains: the update itself, a chain's last link."""
        return self

    @property
    def earlier_links(self) -> tuple[Update, ...]:
        """Links merged into the base weight before :attr:`last_link` (chains only)."""
        return ()

    # -- manifest links -------------------------------------------------------
    @abstractmethod
    def to_link(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """This update's manifest link (docs/checkpoint-format.md, "Link kinds"); the tensors
        it names are added to ``tensors`` under keys that start with ``key``."""

    @classmethod
    @abstractmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        """The update a manifest link of this kind describes (``common``: name, param,
        shape, transposed and base of the update)."""

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
class FactoredUpdate(Update):
    """An update stored as named factors (:attr:`factors`), ``trained`` of which trained;
    the others are frozen (drawn from the run's seed, or fixed by the method)."""

    trained: tuple[str, ...] = ()

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        f = self.factors
        return {k: f[k] for k in self.trained if k in f}

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.factors.items() if k not in self.trained}

    def with_trained(self, tensors: Mapping[str, torch.Tensor]) -> Update:
        f = self.factors
        return dataclasses.replace(
            self, **{k: tensors[k].to(f[k].dtype) for k in self.trained if k in f}
        )

    @property
    def factor_rank(self) -> int | None:
        return int(self.factors["B"].shape[1])

    def to_link(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind}
        for name, value in self.factors.items():
            spec[name] = f"{key}.{name}"
            tensors[spec[name]] = value
        return spec | self._link_fields() | {"trained": list(self.trained)}

    def _link_fields(self) -> dict[str, Any]:
        """Scalar fields of the link besides ``kind``, the tensors and ``trained``."""
        return {}
