"""The adapted layers of any model, genbound's or PEFT's, as adapter layers.

:func:`adapter_view` returns what curvature and landscapes ask an adapted layer (see
:class:`genbound.adapters.layers.AdapterLayer`): genbound's layers answer for themselves;
a PEFT LoRA layer (``lora_A``/``lora_B`` ModuleDicts and ``scaling``) is answered for by
:class:`PeftLoraView`. :func:`adapted_modules` lists the adapted layers with a selected
factor, with their tangent spaces.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from genbound.adapters.layers import AdapterLayer
from genbound.adapters.tangent import (
    AdaptedModule,
    AdapterView,
    NoTangent,
    Tangent,
    factor_tangent,
)


class PeftLoraView:
    """A PEFT LoRA layer with one active adapter a, as an adapter layer: dW = s_a B_a A_a.

    A layer with several active adapters, or with DoRA, has no view: :meth:`factor_names`
    raises :class:`~genbound.adapters.tangent.NoTangent`.
    """

    kind = "peft-lora"
    origin = "B"
    additive = True

    def __init__(self, module: nn.Module):
        self.module = module
        self.base: nn.Module = module.base_layer
        self.active = [a for a in _active(module) if a in module.lora_A]
        self.dora = getattr(module, "lora_magnitude_vector", None)

    def _adapter(self) -> str:
        a = self.active
        if len(a) != 1 or (self.dora is not None and a and a[0] in self.dora):
            raise NoTangent(f"PEFT layer with {len(a)} active adapters or DoRA, skipped")
        return a[0]

    def factor_names(self) -> dict[str, str]:
        a = self._adapter()
        return {"A": f"lora_A.{a}.weight", "B": f"lora_B.{a}.weight"}

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._adapter()
        return self.module.lora_A[a].weight, self.module.lora_B[a].weight

    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        A, B = self._factors()
        return factor_tangent(B.shape[0], A.shape[1], A, B, trained)

    @torch.no_grad()
    def link_delta(self) -> torch.Tensor:
        A, B = self._factors()
        s = float(self.module.scaling[self._adapter()])
        return s * (B.detach().double() @ A.detach().double())


def _active(mod: nn.Module) -> list[str]:
    act = getattr(mod, "active_adapters", None)
    if act is None:
        act = getattr(mod, "active_adapter", None)
    if isinstance(act, str):
        return [act]
    return list(act or [])


def _is_peft_lora(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and hasattr(module, "lora_B")


def adapter_view(module: nn.Module) -> AdapterView | None:
    """The module as an adapter layer, or None when it is not one."""
    if isinstance(module, AdapterLayer):
        return module
    if _is_peft_lora(module):
        return PeftLoraView(module)
    return None


def adapted_modules(
    model: nn.Module, selected: Iterable[str]
) -> tuple[list[AdaptedModule], list[str]]:
    """The adapted layers of ``model`` with a factor among the ``selected`` parameter
    names, in module order, each with its tangent space at its current factors; and
    notes (``"<module>: <why>"``) on adapted layers left out."""
    selected = set(selected)
    found, notes = [], []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        own = {n for n, _ in mod.named_parameters(recurse=True)}
        if not any(prefix + n in selected for n in own):
            continue
        view = adapter_view(mod)
        if view is None:
            continue
        try:
            fn = {k: prefix + v for k, v in view.factor_names().items()}
            trained = tuple(k for k in sorted(fn) if fn[k] in selected)
            if not trained:
                raise NoTangent("adapter layer without a selected factor, skipped")
            tangent = view.tangent(trained)
        except NoTangent as exc:
            notes.append(f"{name}: {exc}")
            continue
        found.append(AdaptedModule(name, mod, view, view.kind, fn, trained, tangent))
    return found, notes
