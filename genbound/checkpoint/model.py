"""The in-memory model of a fine-tuned checkpoint that every analysis reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genbound.adapters.registry import Variant, get_variant
from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.tensors import bits_of
from genbound.checkpoint.updates import Update
from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.checkpoint.subspace import SubspaceCode


@dataclass(frozen=True)
class Hyperparams:
    """Adapter hyper-parameters as configured (per-module values live on each Update).

    Attributes:
        rank: adapter rank r (the default; PEFT ``rank_pattern`` may override per module).
        alpha: LoRA alpha (default; ``alpha_pattern`` may override).
        scale: the default scale s of dW = s B A (alpha / r, or alpha / sqrt(r) with rsLoRA).
        rslora: True when s = alpha / sqrt(r).
        chain: chain length k (1 for unchained methods).
        selector_seed: seed that drew random selectors or window orders, if any.
        targets: the module patterns that were adapted.
        extra: anything else the source recorded (rank_pattern, lr ratio, ...).
    """

    rank: int | None = None
    alpha: float | None = None
    scale: float | None = None
    rslora: bool = False
    chain: int = 1
    selector_seed: int | None = None
    targets: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The hyper-parameters as one flat dict (``extra`` merged in), as manifests and
        reports record them."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "rslora": self.rslora,
            "chain": self.chain,
            "selector_seed": self.selector_seed,
            "targets": list(self.targets),
            **self.extra,
        }


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A fine-tuned checkpoint: which variant, its hyper-parameters, and its updates.

    Attributes:
        path: where it was read from.
        format: ``"peft"``, ``"genbound"`` or ``"state_dicts"``.
        variant: registry name of the adapter variant (``"lora"``, ``"cla"``, ``"fft"``...).
        hparams: see :class:`Hyperparams`.
        updates: module (or tensor) name -> :class:`~genbound.checkpoint.updates.Update`,
            in the order of the model's layers (input side first) where known.
        dtype: the stored dtype of the trained tensors (gives q, bits per parameter).
        base: the lazily read base model, or None when not found.
        base_ref: how the checkpoint names its base model (a path or package), if at all.
        n_train: number of training examples, when known.
        seed: the training run's seed, when known.
        metrics: recorded metrics (train/eval loss, accuracy, a loss history).
        data: the data reference recorded by a genbound run (None otherwise).
        trajectory: trajectory snapshot reference recorded by a genbound run.
        adapter_name: the adapter's name (PEFT's ``"default"`` for the top folder).
        others: further adapters stored beside this one (PEFT sub-folders), by name.
        notes: things the loader wants the user to know (assumptions, skipped keys).
        objective: what the model was trained for, as the checkpoint states it
            (``"causal_lm"`` or ``"sequence_classification"``: a PEFT ``task_type``, a
            genbound run's record), else None.
    """

    path: Path
    format: str
    variant: str
    hparams: Hyperparams
    updates: Mapping[str, Update]
    dtype: torch.dtype
    base: BaseModel | None = None
    base_ref: str | None = None
    n_train: int | None = None
    seed: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] | None = None
    trajectory: Mapping[str, Any] | None = None
    adapter_name: str = "default"
    others: Mapping[str, Checkpoint] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    objective: str | None = None
    #: a subspace run's coded z and how its factors are rebuilt from z, else None.
    subspace: SubspaceCode | None = None
    #: trained factors' values when their link started, by the name
    #: :func:`~genbound.bounds.compression.trainable_tensors` gives them (a genbound run's
    #: A, say; B starts at 0), where the run records them; else None.
    initial: Mapping[str, torch.Tensor] | None = None

    @property
    def spec(self) -> Variant:
        """The variant's registry entry (structure, trainable count formula)."""
        return get_variant(self.variant)

    @property
    def bits_per_param(self) -> int:
        """q: bits per stored trainable scalar, from the stored dtype."""
        return bits_of(self.dtype)

    @property
    def num_trainable(self) -> int:
        """D counted from the stored trainable tensors (heads and saved modules included);
        for a subspace run, d per link (only z trained: d, or d k for a chain of k links)."""
        if self.subspace is not None:
            return self.subspace.num_coded
        return sum(u.num_trainable for u in self.updates.values())

    def formula_count(self, update: Update) -> tuple[int, bool]:
        """(D of one update from the variant's registry formula, whether the formula applied).

        Adapted matrices (updates stored as factors: low-rank, selector, chain, DoRA, VeRA)
        use ``Variant.trainable_per_layer(n, m, r, k)`` with r their
        :attr:`~genbound.checkpoint.updates.Update.factor_rank`; every other tensor (heads,
        biases, ``modules_to_save``, full fine-tuning) counts its elements, and the flag is
        False.
        """
        r = update.factor_rank
        if update.is_dense or r is None or not update.is_matrix:
            return update.num_trainable, False
        spec = self.spec
        k = self.hparams.chain if spec.chained else 1
        n, m = update.shape
        return spec.trainable_per_layer(n, m, r, k), True

    def num_trainable_by_formula(self) -> int:
        """D from the variant's registry formula, summed over updates (see :meth:`formula_count`);
        d per link for a subspace run."""
        if self.subspace is not None:
            return self.subspace.num_coded
        return sum(self.formula_count(u)[0] for u in self.updates.values())

    def requires_base(self) -> BaseModel:
        """The base model, or a clear error saying how to provide it."""
        if self.base is None:
            raise GenboundError(
                f"{self.path}: this analysis needs the base model, which was not found "
                f"(the checkpoint names {self.base_ref or 'none'}); pass --base PATH."
            )
        return self.base

    def close(self) -> None:
        if self.base is not None:
            self.base.close()

    def __repr__(self) -> str:
        return (
            f"Checkpoint(variant={self.variant!r}, format={self.format!r}, "
            f"updates={len(self.updates)}, trainable={self.num_trainable}, "
            f"dtype={self.dtype}, path={str(self.path)!r})"
        )
