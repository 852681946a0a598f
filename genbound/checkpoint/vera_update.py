"""VeRA's update kind: dW = diag(b) B diag(d) A (see :mod:`genbound.adapters.vera`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from genbound.checkpoint.update_base import FactoredUpdate, LinkReader, Update
from genbound.linalg import ThinSVD, lowrank_svd, lowrank_svdvals


@dataclass(frozen=True, eq=False, kw_only=True)
class VeraUpdate(FactoredUpdate):
    """VeRA: dW = diag(b) B diag(d) A (Kopiczko et al. 2024).

    B (n x r) and A (r x m) are frozen random projections, the slices of one pair of
    matrices that every adapted layer of a run shares (drawn from its seed); the scaling
    vectors b (n,) and d (r,) train. PEFT's ``vera_lambda_b`` and ``vera_lambda_d``.
    """

    kind: ClassVar[str] = "vera"
    B: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    d: torch.Tensor
    trained: tuple[str, ...] = ("b", "d")

    @property
    def factors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B, "A": self.A, "b": self.b, "d": self.d}

    @property
    def num_trainable(self) -> int:
        return sum(self.factors[f].numel() for f in self.trained)

    @property
    def rank(self) -> int:
        return min(self.B.shape[1], *self.shape)

    def scaled_B(self) -> torch.Tensor:
        """diag(b) B diag(d) (n x r, float64): dW = scaled_B() @ A."""
        b, d = self.b.to(torch.float64), self.d.to(torch.float64)
        return b[:, None] * self.B.to(torch.float64) * d[None, :]

    def _delta64(self) -> torch.Tensor:
        return self.scaled_B() @ self.A.to(torch.float64)

    def singular_values(self) -> np.ndarray:
        return lowrank_svdvals(self.scaled_B(), self.A, 1.0)

    def svd(self) -> ThinSVD:
        return lowrank_svd(self.scaled_B(), self.A, 1.0)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled_B() @ (self.A.to(torch.float64) @ x.to(torch.float64))

    def rmatmul(self, y: torch.Tensor) -> torch.Tensor:
        return self.A.to(torch.float64).T @ (self.scaled_B().T @ y.to(torch.float64))

    @classmethod
    def from_link(cls, spec: Mapping, common: dict, read: LinkReader, where: str) -> Update:
        n, m = common["shape"]
        t = {k: read.tensor(spec, k, where) for k in ("B", "A", "b", "d")}
        r = t["B"].shape[1] if t["B"].ndim == 2 else -1
        read.expect(
            tuple(t["B"].shape) == (n, r)
            and tuple(t["A"].shape) == (r, m)
            and tuple(t["b"].shape) == (n,)
            and tuple(t["d"].shape) == (r,),
            where,
            f"B (n x r), A (r x m), b (n,) and d (r,) with (n, m) = {(n, m)}",
            ", ".join(f"{k} {tuple(v.shape)}" for k, v in t.items()),
        )
        trained = tuple(spec.get("trained", ())) or ("b", "d")
        return cls(**common, **t, trained=trained)
