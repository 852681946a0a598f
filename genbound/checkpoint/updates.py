"""The update kinds: weight updates dW of one tensor of the base model.

``lowrank`` (:class:`LowRankUpdate`), ``selector`` (:class:`SelectorUpdate`), ``chain``
(:class:`ChainUpdate`), ``dense`` (:class:`DenseUpdate`), ``dora`` (:class:`DoraUpdate`)
and ``vera`` (:class:`~genbound.checkpoint.vera_update.VeraUpdate`). What every kind
provides, and the conventions they share (math orientation, ``transposed``, vectors,
tensors new to the model), are in :mod:`genbound.checkpoint.update_base`; a new kind is a
subclass of :class:`Update` (or :class:`FactoredUpdate`) defined anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from genbound.checkpoint.update_base import (
    SEP,
    FactoredUpdate,
    LinkReader,
    Loader,
    Update,
    nested,
    update_kinds,
)
from genbound.checkpoint.vera_update import VeraUpdate
from genbound.linalg import (
    ThinSVD,
    coalesce_columns,
    dense_svd,
    dense_svdvals,
    lowrank_svd,
    lowrank_svdvals,
    selector_svd,
)

__all__ = [
    "SEP",
    "ChainUpdate",
    "DenseUpdate",
    "DoraUpdate",
    "FactoredUpdate",
    "LinkReader",
    "Loader",
    "LowRankUpdate",
    "SelectorUpdate",
    "Update",
    "VeraUpdate",
    "nested",
    "update_kinds",
]


@dataclass(frozen=True, eq=False, kw_only=True)
class LowRankUpdate(FactoredUpdate):
    """dW = scale * B @ A with B (n x r) and A (r x m): LoRA, LoRA+, Asym-LoRA, RAC links."""

    kind: ClassVar[str] = "lowrank"
    B: torch.Tensor
    A: torch.Tensor
    scale: float
    trained: tuple[str, ...] = ("A", "B")

    def _link_fields(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        n_m = common["shape"]
        B, A = read.tensor(spec, "B", where), read.tensor(spec, "A", where)
        read.expect(
            B.shape[0] == n_m[0] and A.shape[1] == n_m[-1] and B.shape[1] == A.shape[0],
            where,
            f"B (n x r) and A (r x m) with (n, m) = {n_m}",
            f"B {tuple(B.shape)}, A {tuple(A.shape)}",
        )
        trained = tuple(spec.get("trained", ())) or ("A", "B")
        return cls(**common, B=B, A=A, scale=float(spec.get("scale", 1.0)), trained=trained)

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
class SelectorUpdate(FactoredUpdate):
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

    def _link_fields(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        n_m = common["shape"]
        B = read.tensor(spec, "B", where)
        idx = read.tensor(spec, "indices", where).to(torch.int64)
        read.expect(
            B.shape[0] == n_m[0] and idx.ndim == 1 and B.shape[1] == idx.numel(),
            where,
            f"B (n x r) and r indices with n = {n_m[0]}",
            f"B {tuple(B.shape)}, indices {tuple(idx.shape)}",
        )
        read.expect(
            bool((idx >= 0).all() and (idx < n_m[1]).all()),
            where,
            f"indices in [0, {n_m[1]})",
            f"range [{int(idx.min())}, {int(idx.max())}]",
        )
        trained = tuple(spec.get("trained", ())) or ("B",)
        return cls(**common, B=B, indices=idx, scale=float(spec.get("scale", 1.0)), trained=trained)

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

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"link{i}{SEP}{k}": v
            for i, link in enumerate(self.links)
            for k, v in link.trained_tensors().items()
        }

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"link{i}{SEP}{k}": v
            for i, link in enumerate(self.links)
            for k, v in link.frozen_tensors().items()
        }

    def with_trained(self, tensors: Mapping[str, torch.Tensor]) -> Update:
        links = tuple(x.with_trained(nested(tensors, f"link{i}")) for i, x in enumerate(self.links))
        return dataclasses.replace(self, links=links)

    @property
    def factor_rank(self) -> int | None:
        ranks = (x.factor_rank for x in self.links)
        return next((r for r in ranks if r is not None), self.rank)

    @property
    def last_link(self) -> Update:
        return self.links[-1]

    @property
    def earlier_links(self) -> tuple[Update, ...]:
        return self.links[:-1]

    def to_link(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        links = [x.to_link(f"{key}.link{i}", tensors) for i, x in enumerate(self.links)]
        return {"kind": self.kind, "links": links}

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        specs = read.field(spec, "links", where)
        links = tuple(read.link(s, common, f"{where}.links[{i}]") for i, s in enumerate(specs))
        return cls(**common, links=links)

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

    @property
    def is_dense(self) -> bool:
        return True

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """``{"delta": dW}`` (math orientation, float64; the value itself for a new tensor
        without a stored reference)."""
        return {"delta": self.delta(torch.float64)}

    def with_trained(self, tensors: Mapping[str, torch.Tensor]) -> Update:
        w0 = self.base_weight(torch.float64)
        delta = tensors["delta"].to(torch.float64)

        def stored(x: torch.Tensor) -> torch.Tensor:
            return x.T.contiguous() if self.transposed else x

        return DenseUpdate(
            name=self.name,
            param=self.param,
            shape=self.shape,
            transposed=self.transposed,
            base=self.base,
            value=lambda: stored(w0 + delta),
            reference=lambda: stored(w0),
            new=self.new,
            trainable=self.num_trainable,
        )

    def to_link(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": self.kind}
        if self.trainable is not None:
            spec["trainable"] = self.trainable
        if self.reference is not None:  # value - initial (a head new to the model)
            tensors[f"{key}.value"], tensors[f"{key}.initial"] = self.value(), self.reference()
            spec.update(value=f"{key}.value", initial=f"{key}.initial")
        elif self.relative or self.new:  # value - W0, or value with W0 = 0
            tensors[f"{key}.value"] = self.value()
            spec.update(value=f"{key}.value", new=self.new)
        else:  # value is dW itself
            tensors[f"{key}.delta"] = self.value()
            spec["delta"] = f"{key}.delta"
        return spec

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        shape = tuple(common["shape"])
        stored = tuple(reversed(shape)) if common["transposed"] else shape
        keys = [k for k in ("delta", "value", "initial") if k in spec]
        loaders = {k: read.lazy(spec, k, where, stored) for k in keys}
        trainable = spec.get("trainable")
        if "delta" in loaders:
            return cls(**common, value=loaders["delta"], trainable=trainable)
        if "value" not in loaders:
            read.field(spec, "value", where)  # raises: the field is required
        if "initial" in loaders:
            return cls(
                **common,
                value=loaders["value"],
                reference=loaders["initial"],
                new=True,
                trainable=trainable,
            )
        new = bool(spec.get("new", False))
        return cls(**common, value=loaders["value"], relative=not new, new=new, trainable=trainable)

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

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.lowrank.trained_tensors(), "magnitude": self.magnitude}

    def frozen_tensors(self) -> dict[str, torch.Tensor]:
        return self.lowrank.frozen_tensors()

    def with_trained(self, tensors: Mapping[str, torch.Tensor]) -> Update:
        return dataclasses.replace(
            self,
            lowrank=self.lowrank.with_trained(tensors),
            magnitude=tensors["magnitude"].to(self.magnitude.dtype),
        )

    @property
    def factor_rank(self) -> int | None:
        return self.lowrank.factor_rank

    def to_link(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        tensors[f"{key}.magnitude"] = self.magnitude
        lowrank = self.lowrank.to_link(key, tensors)
        return {"kind": self.kind, "lowrank": lowrank, "magnitude": f"{key}.magnitude"}

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        low = read.link(read.field(spec, "lowrank", where), common, f"{where}.lowrank")
        mag = read.tensor(spec, "magnitude", where).reshape(-1)
        n = common["shape"][0]
        read.expect(mag.numel() == n, where, f"magnitude of length {n}", f"length {mag.numel()}")
        return cls(**common, lowrank=low, magnitude=mag)

    def _delta64(self) -> torch.Tensor:
        w0 = self.base_weight(torch.float64)
        v = w0 + self.lowrank._delta64()
        norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        return self.magnitude.to(torch.float64).reshape(-1, 1) / norms * v - w0
