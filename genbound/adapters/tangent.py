"""Tangent spaces of adapted layers: the updates of the merged weight an adapter reaches.

An adapter layer computes with a merged weight W (n x m) that depends on its trained
factors. Its tangent space T at the current factors is the span of the derivatives of W:
the directions dW that one small step of training can move W along. Each layer class
says which space that is (``AdapterLayer.tangent``); curvature in "merged" coordinates
(:class:`genbound.curvature.MergedHessianOperator`) restricts the Hessian with respect to
W to it.

A :class:`Tangent` describes T through orthonormal coordinates: a linear map J from a few
small coordinate tensors u to (n x m) matrices with J^T J = I, so that J J^T is the
orthogonal projector P_T and the Hessian in u is unitarily similar to P_T H_W P_T on T.
Everything is float64 except what :meth:`Tangent.bind` casts to the model's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class NoTangent(Exception):
    """An adapted layer whose tangent space is not known for the selected factors; the
    message says why (it is recorded as a note, and the layer is left out)."""


def basis(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of x (float64), by SVD with a rank cutoff:
    singular values below s_max max(shape) eps, eps that of x's dtype (float32's for a
    half-precision x, whose own eps times a dimension of a few hundred exceeds 1)."""
    u, s, _ = torch.linalg.svd(x.detach().double(), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0]
    eps = torch.finfo(x.dtype if x.dtype.itemsize >= 4 else torch.float32).eps
    keep = s > s[0] * max(x.shape) * eps
    return u[:, keep]


#: ``added(output, x, tensors)``: the layer's output with x (J u)^T added, where x is the
#: layer's input (..., m) and ``tensors`` the coordinate tensors u.
Added = Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor]


class Tangent(ABC):
    """The tangent space T of one adapted layer, through orthonormal coordinates.

    Attributes:
        n, m: outputs and inputs of the merged weight.
    """

    n: int
    m: int

    @property
    @abstractmethod
    def dimension(self) -> int:
        """dim T."""

    @property
    @abstractmethod
    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the coordinate tensors u."""

    @abstractmethod
    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u = J^T X for X (p x n x m), float64: one tensor (p x shape) per coordinate."""

    @abstractmethod
    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """J u (p x n x m) for coordinates u (p x shape each); J J^T h = P_T h."""

    @abstractmethod
    def bind(self, dtype: torch.dtype) -> Added:
        """The function adding x (J u)^T to a layer's output, computing in ``dtype``."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P_T X for X (p x n x m), float64."""
        return self.from_coordinates(self.to_coordinates(x))


class FactorTangent(Tangent):
    """T = {Qb Y + Z Qa^T} (+ an extra block of row directions), for dW reached through
    factors: Qb (n x rb) spans what a step in A reaches (col(B)), Qa (m x ra) what a step in
    B reaches (row(A)); either is None when its factor does not train. Coordinates Y
    (rb x m) and Z (n x ra), with the overlap Qb Qb^T Z removed from Z.

    ``rows`` (DoRA, see :mod:`genbound.adapters.dora`): ``(U, M)`` spanning what a
    magnitude adds beyond Qb and Qa, the matrices (I - Qb Qb^T) diag(M c) U for c in R^k,
    orthonormal in c; U (n x m) holds the unit rows of the direction V with row(A)
    removed, M (n x k).
    """

    def __init__(
        self,
        n: int,
        m: int,
        qb: torch.Tensor | None,
        qa: torch.Tensor | None,
        rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.n, self.m = int(n), int(m)
        self.qb, self.qa, self.rows = qb, qa, rows

    @property
    def dimension(self) -> int:
        ra = 0 if self.qa is None else self.qa.shape[1]
        rb = 0 if self.qb is None else self.qb.shape[1]
        k = 0 if self.rows is None else self.rows[1].shape[1]
        return ra * self.n + rb * self.m - ra * rb + k

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        if self.qb is not None:
            shapes.append((self.qb.shape[1], self.m))  # Y
        if self.qa is not None:
            shapes.append((self.n, self.qa.shape[1]))  # Z
        if self.rows is not None:
            shapes.append((self.rows[1].shape[1],))  # c
        return shapes

    def _off_b(self, x: torch.Tensor) -> torch.Tensor:
        """(I - Qb Qb^T) X for X (... x n x q)."""
        return x if self.qb is None else x - self.qb @ (self.qb.T @ x)

    def row_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The (p x k) coordinates of X (p x n x m) along the row block."""
        u, mat = self.rows
        return (self._off_b(x) * u).sum(-1) @ mat

    def row_directions(self, c: torch.Tensor) -> torch.Tensor:
        """The (p x n x m) matrices of coordinates c (p x k) in the row block."""
        u, mat = self.rows
        return self._off_b((c @ mat.T)[..., None] * u)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        xa = None
        if self.qa is not None:  # X P_A
            xa = (x @ self.qa) @ self.qa.T
            out = out + xa
        if self.qb is not None:  # P_B X (minus the overlap P_B X P_A)
            out = out + self.qb @ (self.qb.T @ x)
            if xa is not None:
                out = out - self.qb @ (self.qb.T @ xa)
        if self.rows is not None:  # orthogonal to the rest by construction
            out = out + self.row_directions(self.row_coordinates(x))
        return out

    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        if self.qb is not None:
            out.append(self.qb.T @ x)  # Y = Qb^T X
        if self.qa is not None:
            rest = x - self.qb @ (self.qb.T @ x) if self.qb is not None else x
            out.append(rest @ self.qa)  # Z = (I - Qb Qb^T) X Qa
        if self.rows is not None:
            out.append(self.row_coordinates(x))  # c
        return out

    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out, i = None, 0
        if self.qb is not None:
            out = self.qb @ parts[0]  # Qb Qb^T h
            i = 1
        if self.qa is not None:
            hqa = parts[i]
            if self.qb is not None:
                hqa = hqa - self.qb @ (self.qb.T @ hqa)
            term = hqa @ self.qa.T  # (I - Qb Qb^T) h Qa Qa^T
            out = term if out is None else out + term
        if self.rows is not None:
            term = self.row_directions(parts[-1])
            out = term if out is None else out + term
        return out

    def bind(self, dtype: torch.dtype) -> Added:
        qb = self.qb.to(dtype) if self.qb is not None else None
        qa_t = self.qa.T.to(dtype).contiguous() if self.qa is not None else None
        rows = tuple(t.to(dtype).contiguous() for t in self.rows) if self.rows else None
        linear = nn.functional.linear

        def added(output: torch.Tensor, x: torch.Tensor, tensors: list[torch.Tensor]):
            i = 0
            if qb is not None:  # x Y^T Qb^T
                output = output + linear(linear(x, tensors[0]), qb)
                i = 1
            if qa_t is not None:  # x Qa Z^T
                output = output + linear(linear(x, qa_t), tensors[i])
            if rows is not None:  # ((x U^T) * (M c)) (I - Qb Qb^T)
                u, mat = rows
                t = linear(x, u) * (mat @ tensors[-1])
                if qb is not None:
                    t = t - (t @ qb) @ qb.T
                output = output + t
            return output

        return added


class ColumnTangent(Tangent):
    """T = {Z on the columns ``cols``}: a selector's dW = dB E^T reaches only the input
    columns it selects. Coordinates Z (n x c) for the c distinct columns."""

    def __init__(self, n: int, m: int, cols: torch.Tensor):
        self.n, self.m = int(n), int(m)
        self.cols = torch.unique(cols.detach().to(torch.int64))  # the set of selected columns

    @property
    def dimension(self) -> int:
        return int(self.cols.numel()) * self.n

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [(self.n, int(self.cols.numel()))]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[..., self.cols] = x[..., self.cols]
        return out

    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[..., self.cols]]

    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        z = parts[0]
        out = torch.zeros(*z.shape[:-1], self.m, dtype=torch.float64)
        out[..., self.cols] = z
        return out

    def bind(self, dtype: torch.dtype) -> Added:
        cols = self.cols

        def added(output: torch.Tensor, x: torch.Tensor, tensors: list[torch.Tensor]):
            return output + nn.functional.linear(x.index_select(-1, cols), tensors[0])

        return added


def factor_tangent(
    n: int, m: int, A: torch.Tensor | None, B: torch.Tensor, trained: tuple[str, ...]
) -> FactorTangent:
    """The tangent space of dW = s B A at (B, A) when the factors in ``trained`` train:
    {s (dB A + B dA)} = {Qb Y + Z Qa^T} (the scale s does not change the span)."""
    qb = basis(B) if "A" in trained else None
    qa = basis(A.T) if "B" in trained and A is not None else None
    return FactorTangent(n, m, qb, qa)


class AdapterView(Protocol):
    """What curvature and landscapes ask an adapted layer (genbound's
    :class:`~genbound.adapters.layers.AdapterLayer`, or a view of a PEFT layer).

    Attributes:
        kind: the layer's kind (``"lowrank"``, ``"selector"``, ``"dora"``, ``"vera"``,
            ``"peft-lora"``).
        base: the wrapped layer holding the base weight.
        origin: the trained factor that is zero when dW = 0.
        additive: True when the layer computes base(x) + update(x).
    """

    kind: str
    base: nn.Module
    origin: str
    additive: bool

    def factor_names(self) -> dict[str, str]:
        """Factors that are parameters: name -> parameter name relative to the layer."""

    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        """The tangent space when the factors ``trained`` train (:class:`NoTangent` when
        unknown)."""

    def link_delta(self) -> torch.Tensor:
        """dW the layer adds to its base weight, (n x m) float64."""


@dataclass(frozen=True, eq=False)
class AdaptedModule:
    """An adapted layer as the merged curvature operator and the landscapes see it.

    Attributes:
        name: module path.
        module: the adapted module (its output gets ``x @ E^T`` added).
        view: the module as an adapter layer (the module itself for genbound's layers; a
            wrapper of a PEFT layer): its base layer, its dW, the factor that is zero at
            dW = 0 (see :class:`genbound.adapters.layers.AdapterLayer`).
        kind: ``"peft-lora"``, ``"lowrank"``, ``"selector"``, ``"dora"`` or ``"vera"``.
        factor_names: factor -> parameter name in the model (``"B"``, ``"A"``,
            ``"magnitude"``, ``"b"``, ``"d"`` as present).
        trained: which factors are in the selection (e.g. ``("A", "B")``, ``("B",)``;
            DoRA adds ``"magnitude"``).
        tangent: the layer's tangent space at its current factors.
    """

    name: str
    module: nn.Module
    view: AdapterView
    kind: str
    factor_names: dict[str, str]
    trained: tuple[str, ...]
    tangent: Tangent

    @property
    def n(self) -> int:
        return self.tangent.n

    @property
    def m(self) -> int:
        return self.tangent.m

    @property
    def base(self) -> nn.Module:
        """The wrapped layer holding the base weight."""
        return self.view.base

    def delta(self) -> torch.Tensor:
        """dW the layer adds to its base weight (n x m, float64)."""
        return self.view.link_delta()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P_T X for X (p x n x m), float64."""
        return self.tangent.project(x)

    @property
    def tangent_dimension(self) -> int:
        return self.tangent.dimension
