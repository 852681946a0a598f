"""Subspace training: a run's trained tensors are theta_0 + P z, only z (d,) trains.

:func:`attach` turns an :class:`~genbound.adapters.handle.AdapterHandle` into a subspace
run (``genbound.adapters.apply(..., subspace=d)`` calls it):

* theta (D,) is every trainable tensor of the run, flattened (row-major) and
  concatenated in the order of ``model.named_parameters()`` when ``apply`` returned
  (adapter factors in module order, then the head's tensors; the order is stored in the
  run's manifest);
* theta_0 is their values then (B = 0, A or the selectors from the run's seed, the head's
  initial weights); P (D x d) is a :class:`~genbound.adapters.projection.KronProjection`
  with unit-norm columns drawn from ``projection_seed(seed)``;
* each of these tensors stops being an ``nn.Parameter`` and becomes a buffer of its
  module (same name, so the state dict is unchanged); a forward pre-hook on each module
  that holds one writes theta_0 + P z into all of them, once per forward pass (as views
  of one float64 expansion cast to the tensor's dtype, differentiable in z), so a pass
  that enters below the model (a suffix of its layers) expands too; a forward hook
  replaces the module's tensors by detached copies once it has run (so the model can be
  copied and saved between steps);
* z (d,), zero at the start, in the trained tensors' dtype (the first one's; so a saved
  run stores q bits per coded scalar, q of the manifest's ``dtype``), is the only trained
  parameter (``handle.subspace.z``); the expansion runs in float64.

Learning rate: ||P z|| = ||z|| (unit-norm, nearly orthogonal columns), so an AdamW step
of lr on every coordinate of z moves theta by about lr sqrt(d) in norm, spread over D
coordinates. See docs/checkpoint-format.md ("Subspace runs") for the default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genbound.adapters.projection import KINDS, make_projection
from genbound.errors import GenboundError

log = logging.getLogger(__name__)

#: Added to the run's seed to seed P, so that P's Gaussian draws are not A's.
PROJECTION_SEED_OFFSET = 2**32


def projection_seed(seed: int) -> int:
    """The seed of P for a run seeded ``seed``: ``seed + 2**32``."""
    return int(seed) + PROJECTION_SEED_OFFSET


@dataclass
class Slot:
    """One trained tensor inside theta.

    Attributes:
        name: its name in the wrapped model's state dict (``fc1.B``, ``classifier.weight``).
        module: the module that holds it as a buffer.
        attr: its attribute name in ``module``.
        shape: its shape (as stored in the model).
        dtype: its dtype.
        offset: where it starts in theta.
    """

    name: str
    module: nn.Module
    attr: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Subspace:
    """The live expansion theta = theta_0 + P z of a subspace run (module docstring).

    Args:
        model: the wrapped model.
        names: state-dict names of the trained tensors, in theta's order.
        d: the subspace dimension.
        seed: P's seed.
        kind: the projection kind (:data:`~genbound.adapters.projection.KINDS`).
    """

    def __init__(self, model: nn.Module, names: list[str], d: int, seed: int, kind: str):
        self.model, self.kind, self.seed, self.d = model, kind, int(seed), int(d)
        #: the link being trained (chained runs); its P is seeded ``seed + link``.
        self.link = 0
        #: finished links: ``{"z": z, "theta0": theta_0}`` (detached copies), oldest first.
        self.history: list[dict[str, torch.Tensor]] = []
        self.slots: list[Slot] = []
        offset = 0
        params = dict(model.named_parameters())
        for name in names:
            p = params[name]
            path, _, attr = name.rpartition(".")
            module = model.get_submodule(path) if path else model
            self.slots.append(Slot(name, module, attr, tuple(p.shape), p.dtype, offset))
            offset += p.numel()
        self.D = offset
        device = params[names[0]].device
        self.theta0 = torch.cat([params[n].detach().double().reshape(-1) for n in names])
        self.P = make_projection(kind, self.D, self.d, self.seed).to(device)
        dtype = self.slots[0].dtype
        self.z = nn.Parameter(torch.zeros(self.d, dtype=dtype, device=device))
        #: z -> the z the expansion uses (quantization-aware training, :mod:`genbound.qat`:
        #: a straight-through quantizer); None: z itself.
        self.quantizer: Callable[[torch.Tensor], torch.Tensor] | None = None
        for slot in self.slots:
            value = getattr(slot.module, slot.attr).detach().clone()
            del slot.module._parameters[slot.attr]
            slot.module.register_buffer(slot.attr, value)
        #: the modules that consumed the current expansion, and the z version and grad
        #: mode it was computed at (see :meth:`_before`).
        self._used: set[int] = set()
        self._made_at: tuple[int, bool, int] | None = None
        self._hooks = []
        for module in {id(s.module): s.module for s in self.slots}.values():
            self._hooks += [
                module.register_forward_pre_hook(self._before),
                module.register_forward_hook(self._after),
            ]

    # -- expansion -----------------------------------------------------------------
    def theta(self) -> torch.Tensor:
        """theta_0 + P z, (D,) float64 (differentiable in z when grad is enabled); z as
        the :attr:`quantizer` maps it when one is set."""
        z = self.z if self.quantizer is None else self.quantizer(self.z)
        return self.theta0 + self.P.matvec(z)

    def pieces(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta cut into the trained tensors (their shapes and dtypes), by state-dict name."""
        return {
            s.name: theta[s.offset : s.offset + s.numel].view(s.shape).to(s.dtype)
            for s in self.slots
        }

    def write(self, *, grad: bool) -> None:
        """Write the expansion into the modules (detached unless ``grad``)."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            values = self.pieces(self.theta())
        for slot in self.slots:
            v = values[slot.name]
            setattr(slot.module, slot.attr, v if grad else v.detach())
        if not grad:  # the next forward expands again, with grad if enabled
            self._made_at = None

    @torch.no_grad()
    def refresh(self) -> None:
        """Write the current expansion, detached (before reading, saving or merging)."""
        self.write(grad=False)

    def _before(self, module, args):
        """Before a module that holds trained tensors runs: expand theta_0 + P z (with
        grad) unless the current expansion is fresh: made for this z (version) and grad
        mode, and not yet consumed by this module. So one forward pass expands once,
        whichever entry point it uses (the model, or a suffix of its layers)."""
        made_at = (self.z._version, torch.is_grad_enabled(), id(self.quantizer))
        if id(module) in self._used or self._made_at != made_at:
            self.write(grad=True)
            self._used, self._made_at = set(), made_at
        self._used.add(id(module))

    def _after(self, module, args, output):
        """After the module ran, its tensors become detached copies (the graph keeps what
        it needs), so the model can be copied and saved between steps."""
        for slot in self.slots:
            if slot.module is module:
                setattr(module, slot.attr, getattr(module, slot.attr).detach())

    @torch.no_grad()
    def restart(self) -> list[nn.Parameter]:
        """Start a chain's next link, after the layers started theirs: theta_0 := the
        tensors now (new factors, the head as trained so far), z := 0, a new P seeded
        ``seed + link``. Returns ``[z]`` (its optimizer state must be rebuilt)."""
        # the finished link's z as its factors were merged (quantized under a quantizer)
        done = self.z if self.quantizer is None else self.quantizer(self.z)
        self.history.append({"z": done.detach().clone(), "theta0": self.theta0})
        self.link += 1
        self.theta0 = torch.cat(
            [getattr(s.module, s.attr).detach().double().reshape(-1) for s in self.slots]
        )
        seed = self.seed + self.link
        self.P = make_projection(self.kind, self.D, self.d, seed).to(self.z.device)
        self.z.zero_()
        return [self.z]

    @torch.no_grad()
    def release(self) -> None:
        """Remove the hooks; the trained tensors become frozen parameters again, holding
        the current expansion."""
        self.refresh()
        for h in self._hooks:
            h.remove()
        for slot in self.slots:
            value = getattr(slot.module, slot.attr)
            del slot.module._buffers[slot.attr]
            slot.module.register_parameter(slot.attr, nn.Parameter(value, requires_grad=False))


def check_subspace(variant, subspace: Any, seed: Any, lr_ratio: Any) -> None:
    """Raise a GenboundError when ``subspace`` cannot be used with this run (before
    ``apply`` touches the model)."""
    if subspace is None:
        return
    if not isinstance(subspace, int) or isinstance(subspace, bool) or subspace < 1:
        raise GenboundError(
            f"apply: expected subspace=d, a positive integer (the subspace dimension); "
            f"found {subspace!r}."
        )
    if variant.name == "fft":
        raise GenboundError(
            "apply: subspace training is for adapters and heads; expected a low-rank, "
            "selector, chained or 'head' method, found 'fft' (its D is the whole model)."
        )
    if variant.lr_ratio is not None or lr_ratio is not None:
        raise GenboundError(
            f"apply: method {variant.name!r} sets a learning-rate ratio between factors, "
            "which has no meaning when only z trains; use 'lora' with subspace=d."
        )
    if seed is None:
        raise GenboundError(
            "apply: a subspace run needs seed=s (P and theta_0 are drawn from it and the "
            "run is rebuilt from it); found seed=None."
        )


def check_dimension(d: int, D: int, what: str = "") -> None:
    """Raise a GenboundError unless 1 <= d <= D."""
    if d > D:
        raise GenboundError(
            f"apply: subspace d = {d} is larger than the run's D = {D} trained scalars"
            f"{what}; expected 1 <= d <= {D}."
        )


def attach(handle, d: int, *, kind: str = "kron") -> Subspace:
    """Make ``handle``'s run a subspace run of dimension d (in place); returns the Subspace.

    Raises a GenboundError, before changing anything, when d > D.
    """
    if kind not in KINDS:
        raise GenboundError(f"apply: unknown projection kind {kind!r}; expected {KINDS}.")
    params = handle.named_trainable_parameters()
    names = list(params)
    listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    check_dimension(d, sum(p.numel() for p in params.values()), f" ({listed})")
    sub = Subspace(handle.model, names, d, projection_seed(handle.seed), kind)
    handle.subspace = sub
    handle.hparams["subspace"] = int(d)
    log.info("subspace run: D = %d trained scalars = theta_0 + P z, d = %d", sub.D, d)
    return sub


def save_fields(handle, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The manifest's ``subspace`` field (docs/checkpoint-format.md, "Subspace runs").

    In ``tensors`` (the run's tensors as a plain run saves them) every expanded trained
    tensor is removed, and each link's z and initial tensors are added: link i stores
    z as ``subspace.link<i>.z`` and theta_0's pieces as ``subspace.link<i>.initial.<key>``,
    except, for i > 0, the head's (its initial value is its value at the end of link i-1).
    """
    sub: Subspace = handle.subspace
    dense = {d.param: d for d in handle.dense}
    last = sub.link
    thetas = [h["theta0"] for h in sub.history] + [sub.theta0]
    zs = [h["z"] for h in sub.history] + [sub.z.detach().clone()]
    links = []
    for i, (theta0, z) in enumerate(zip(thetas, zs, strict=True)):
        initial = sub.pieces(theta0)
        keys, inits = [], []
        for slot in sub.slots:
            if slot.name in dense:
                key = f"{dense[slot.name].name}.value" if i == last else None
                init = None if i > 0 else f"subspace.link{i}.initial.{slot.name}"
            else:
                path, _, local = slot.name.rpartition(".")
                key = f"{path}.link{i}.{local}" if handle.chained else slot.name
                init = f"subspace.link{i}.initial.{slot.name}"
            if key is not None:
                if key not in tensors:  # pragma: no cover - internal consistency
                    raise GenboundError(f"save: no run tensor {key!r} for {slot.name!r}.")
                del tensors[key]
            if init is not None:
                tensors[init] = initial[slot.name].contiguous()
            keys.append(key)
            inits.append(init)
        tensors[f"subspace.link{i}.z"] = z.cpu()
        links.append({"z": f"subspace.link{i}.z", "keys": keys, "initial": inits})
    return {
        "kind": sub.kind,
        "d": sub.d,
        "D": sub.D,
        "seed": sub.seed,
        "tensors": [{"name": s.name, "shape": list(s.shape)} for s in sub.slots],
        "links": links,
    }
