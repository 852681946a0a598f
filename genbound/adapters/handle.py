"""The handle that :func:`genbound.adapters.apply` returns: trainable parameters, the
chain schedule, merging, and saving a run directory (``genbound.run/1``).

dW is always described relative to the *original* base weight W0: chained methods keep
the factors of every merged link, so a saved run is a list of links even though the
live model's ``base.weight`` already holds the merged ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genbound.adapters.layers import AdaptedLayer
from genbound.adapters.peft_export import export_peft
from genbound.adapters.registry import Variant, variants
from genbound.checkpoint.manifest import save_run
from genbound.checkpoint.update_base import SEP
from genbound.errors import GenboundError

log = logging.getLogger(__name__)


@dataclass
class DenseTensor:
    """A tensor that trains in full (a head's, or a target's under ``fft``).

    Attributes:
        name: the update's name (module path for a matrix weight, else the tensor name).
        param: the tensor's name in the model's state dict.
        parameter: the live parameter.
        initial: a detached copy of its value when ``apply`` ran (stored orientation).
        transposed: True for a Conv1D weight (stored (m x n)).
        head: True for a head tensor (new to the model: saved with ``value`` and ``initial``).
    """

    name: str
    param: str
    parameter: nn.Parameter
    initial: torch.Tensor
    transposed: bool = False
    head: bool = False

    @property
    def shape(self) -> list[int]:
        s = list(self.parameter.shape)
        return s[::-1] if self.transposed else s


@dataclass
class AdapterHandle:
    """What :func:`~genbound.adapters.apply` returns.

    Attributes:
        model: the wrapped model (changed in place by ``apply``).
        variant: the method's registry entry.
        layers: module path -> adapted layer (empty for ``fft`` and ``head``).
        dense: trained-in-full tensors (the head, and the targets under ``fft``).
        hparams: the ``hparams`` written to the manifest.
        seed: the run's seed (every random draw came from it).
        chain: k, the planned number of links (1 for unchained methods).
        lr_ratio: LoRA+ ratio lr_B / lr (None for other methods).
        heads: module paths of the head modules (train in full).
        subspace: a subspace run's :class:`~genbound.adapters.subspace.Subspace` (its
            ``z`` is then the only trained parameter), else None.
    """

    model: nn.Module
    variant: Variant
    layers: dict[str, AdaptedLayer]
    dense: list[DenseTensor]
    hparams: dict[str, Any]
    seed: int
    chain: int = 1
    lr_ratio: float | None = None
    heads: list[str] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator, repr=False)
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list, repr=False)
    merged: bool = False
    #: the live expansion of a subspace run (:mod:`genbound.adapters.subspace`), else None.
    subspace: Any = field(default=None, repr=False)

    # -- parameters ---------------------------------------------------------------
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains now, by its name in the model (``{"subspace.z": z}``
        for a subspace run)."""
        if self.subspace is not None:
            return {"subspace.z": self.subspace.z}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    @property
    def num_trainable(self) -> int:
        """Scalars that train in the current link (heads included)."""
        return sum(p.numel() for p in self.trainable_parameters())

    def num_trainable_by_formula(self) -> int:
        """D over the whole run: the registry formula per adapted layer plus dense tensors
        (d for a subspace run)."""
        if self.subspace is not None:
            return self.subspace.d
        total = sum(d.parameter.numel() for d in self.dense)
        for layer in self.layers.values():
            k = self.chain if self.variant.chained else 1
            total += self.variant.trainable_per_layer(layer.n, layer.m, layer.rank, k)
        return total

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: B factors get ``lr * lr_ratio`` under LoRA+."""
        params = self.named_trainable_parameters()
        fast = set()
        if self.lr_ratio is not None:
            fast = {id(layer.B) for layer in self.layers.values()}
        slow = [p for p in params.values() if id(p) not in fast]
        groups = [{"params": slow, "lr": lr, "weight_decay": weight_decay}] if slow else []
        if fast:
            b = [p for p in params.values() if id(p) in fast]
            groups.append(
                {"params": b, "lr": lr * float(self.lr_ratio), "weight_decay": weight_decay}
            )
        return groups

    # -- chain schedule -------------------------------------------------------------
    @property
    def chained(self) -> bool:
        return self.variant.chained

    @property
    def links_done(self) -> int:
        """Links already merged into the base weight."""
        return len(next(iter(self.layers.values())).finished) if self.layers else 0

    def reset_steps(self, total_steps: int) -> list[int]:
        """Steps after which :meth:`chain_step` runs when k links share ``total_steps``:
        ``round(j * total_steps / k)`` for j = 1 .. k-1 (empty for unchained methods)."""
        if not self.chained or self.chain <= 1:
            return []
        return [round(j * total_steps / self.chain) for j in range(1, self.chain)]

    def chain_step(self) -> list[nn.Parameter]:
        """Merge the finished link of every layer into its base weight and start the next.

        Returns the adapter parameters whose optimizer state must be rebuilt (their values
        were reinitialised in place; :func:`genbound.train.fit` drops their AdamW state).
        """
        if not self.chained:
            chained = ", ".join(v.name for v in variants().values() if v.chained)
            raise GenboundError(
                f"chain_step: variant {self.variant.name!r} is not chained; expected one of "
                f"{chained}."
            )
        if self.links_done + 1 >= self.chain:
            raise GenboundError(
                f"chain_step: all {self.chain} links of the chain have started; expected at most "
                f"{self.chain - 1} chain steps, found one more."
            )
        reset: list[nn.Parameter] = []
        if self.subspace is not None:
            self.subspace.refresh()
        for layer in self.layers.values():
            reset += layer.merge_link(self.generator)
            layer.record_initial()
        if self.subspace is not None:
            reset = self.subspace.restart()
        log.debug("chain step: link %d of %d started", self.links_done + 1, self.chain)
        return reset

    # -- weights ----------------------------------------------------------------------
    def delta_weights(self) -> dict[str, torch.Tensor]:
        """dW of each adapted layer relative to the original W0 (n x m, float64, sum of links)."""
        return {name: layer.delta() for name, layer in self.layers.items()}

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """W0 + dW of every changed tensor, by its original state-dict name, stored orientation.

        Nothing is modified (new tensors are returned).
        """
        self._refresh()
        out = {f"{n}.weight": layer.merged_weight() for n, layer in self.layers.items()}
        for d in self.dense:
            out[d.param] = self._dense_value(d).detach().clone()
        return out

    def _refresh(self) -> None:
        """A subspace run: write the current theta_0 + P z into the model's tensors."""
        if self.subspace is not None:
            self.subspace.refresh()

    def _dense_value(self, d: DenseTensor) -> torch.Tensor:
        """The current value of a dense tensor (a buffer of its module in a subspace run)."""
        if self.subspace is None:
            return d.parameter
        path, _, attr = d.param.rpartition(".")
        return getattr(self.model.get_submodule(path) if path else self.model, attr)

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold every adapter into its base weight and unwrap it, in place; returns the model.

        Afterwards the model is a plain model (state-dict names as before ``apply``) and
        the handle can no longer save. A subspace run's tensors become frozen
        parameters again.
        """
        if self.subspace is not None:
            self.subspace.release()
        for name, layer in self.layers.items():
            layer.base.weight.copy_(layer.merged_weight())
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, layer.base)
        self.layers = {}
        self.merged = True
        return self.model

    # -- trajectory -------------------------------------------------------------------
    def snapshot(self, step: int) -> None:
        """Record a copy of every trainable parameter at optimisation step ``step``."""
        snap = {n: p.detach().cpu().clone() for n, p in self.named_trainable_parameters().items()}
        self.snapshots.append((int(step), snap))

    # -- saving -----------------------------------------------------------------------
    def save(
        self,
        run_dir: str | Path,
        *,
        base_model: str | Path | Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        n_train: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write a ``genbound.run/1`` directory (see docs/checkpoint-format.md).

        Args:
            run_dir: destination (must not exist unless ``overwrite``).
            base_model: the ORIGINAL base model the run started from: a folder/file path or
                a manifest reference ``{"path": ..., "python": "module:function"}``.
            data: a task reference, stored as is.
            n_train: number of training examples.
            metrics: e.g. ``FitResult.metrics()``.

        Adapted layers are saved as their factors (a ``chain`` of links for chained
        methods), dense tensors as ``delta`` (fft) or ``value`` + ``initial`` (heads).
        Snapshots (:meth:`snapshot`) go to ``trajectory.safetensors``, keyed by the
        parameters' names in the wrapped model (``fc1.B``, ``classifier.weight``).
        ``hparams.chain`` is the number of links actually started (``chain_planned``: k).
        """
        if self.merged:
            raise GenboundError(
                "save: the adapters were merged into the model; expected a handle before "
                "merge(), found a merged one. Save first, then merge."
            )
        self._refresh()
        updates, tensors = self._updates()
        hparams = dict(self.hparams)
        if self.chained:
            hparams["chain"] = self.links_done + 1
            hparams["chain_planned"] = self.chain
        subspace, dtype, initial = None, None, None
        if self.subspace is not None:  # theta_0 is stored with z
            from genbound.adapters.subspace import save_fields

            dtype = self.subspace.slots[0].dtype
            subspace = save_fields(self, tensors)
        else:
            initial = self._initial_factors(tensors)
        path = save_run(
            run_dir,
            variant=self.variant.name,
            updates=updates,
            tensors=tensors,
            hparams=hparams,
            base_model=base_model,
            data=data,
            n_train=n_train,
            seed=self.seed,
            metrics=metrics,
            snapshots=self.snapshots,
            overwrite=overwrite,
            subspace=subspace,
            dtype=dtype,
            initial=initial,
        )
        log.info("run written to %s", path)
        return path

    def _initial_factors(self, tensors: dict[str, torch.Tensor]) -> dict[str, str] | None:
        """The manifest's ``initial`` field: each link's trained factors when it started
        (not the one that starts at zero), added to ``tensors`` as ``initial.<key>``, by
        the name :func:`genbound.bounds.compression.trainable_tensors` gives the factor
        (``fc1::A``; ``fc1::link1::A`` in a chain). None when there are none."""
        out: dict[str, str] = {}
        for name, layer in self.layers.items():
            for i, factors in enumerate(layer.initial):
                for factor, value in factors.items():
                    link = f"link{i}" if self.chained else None
                    coded = SEP.join(p for p in (name, link, factor) if p)
                    key = ".".join(p for p in ("initial", name, link, factor) if p)
                    tensors[key] = value.contiguous()
                    out[coded] = key
        return out or None

    def _updates(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        updates: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            # one link: plain keys "<name>.B"; a chain: "<name>.link<i>.B"
            specs, t = layer.link_specs(name, numbered=self.chained)
            tensors.update(t)
            link = {"kind": "chain", "links": specs} if self.chained else specs[0]
            updates[name] = {
                "param": f"{name}.weight",
                "shape": [layer.n, layer.m],
                "transposed": layer.transposed,
                "link": link,
            }
        for d in self.dense:
            value = self._dense_value(d).detach().clone()
            if d.head:
                link = {"kind": "dense", "value": f"{d.name}.value", "initial": f"{d.name}.initial"}
                tensors[link["value"]] = value
                tensors[link["initial"]] = d.initial
            else:
                link = {"kind": "dense", "delta": f"{d.name}.delta"}
                tensors[link["delta"]] = value - d.initial
            updates[d.name] = {
                "param": d.param,
                "shape": d.shape,
                "transposed": d.transposed,
                "link": link,
            }
        return updates, tensors

    # -- PEFT export --------------------------------------------------------------------
    def export_peft(
        self, out_dir: str | Path, *, base_model_name_or_path: str | None = None
    ) -> Path:
        """Write a PEFT LoRA adapter folder (lora, lora_plus, asym); see
        :func:`genbound.adapters.peft_export.export_peft`."""
        return export_peft(self, out_dir, base_model_name_or_path=base_model_name_or_path)
