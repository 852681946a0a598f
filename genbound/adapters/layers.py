"""Wrapped linear layers shared by the adapter methods: y = W0 x + b + s * B (A x).

Math orientation throughout: the base weight W0 is (n x m) with n outputs and m inputs,
B is (n x r), A is (r x m). A Hugging Face ``Conv1D`` stores its weight as (m x n);
:func:`linear_shape` reports it as ``transposed`` and merges write the transpose.

Every adapter layer is an :class:`AdapterLayer`, which says what the rest of genbound
needs to know about it (so curvature, landscapes and rebuilding ask it instead of
testing types or attribute names):

* ``kind``: the update kind it saves and rebuilds (``genbound.checkpoint.updates``);
* ``trained``: its factors that train; its own parameters are its factors, its own
  buffers the frozen tensors the run's seed fixes (:meth:`AdapterLayer.frozen_names`);
* ``origin``: the trained factor that is zero when dW = 0 (LoRA's B);
* ``additive``: True when the layer computes base(x) + update(x), so that moving the
  base weight by D moves the merged weight by D;
* :meth:`~AdapterLayer.tangent`: its tangent space (:mod:`genbound.adapters.tangent`);
* :meth:`~AdapterLayer.link_delta`: the dW it adds to its base weight;
* :meth:`~AdapterLayer.from_update`: the layer rebuilt from a checkpoint's update.

Layers that :func:`genbound.adapters.apply` trains (:class:`AdaptedLayer`) also say how
a run builds them (:meth:`AdaptedLayer.build`) and which target shapes they accept
(:meth:`AdaptedLayer.check_target`). A new layer class registers the update kind it
rebuilds with :func:`genbound.adapters.registry.register_layer`.

Two families here:

* :class:`LowRankLayer`: A is a dense (r x m) tensor, trained (:class:`LoraLayer`: LoRA,
  CoLA) or a frozen random buffer (:class:`AsymLayer`: Asym-LoRA, RAC).
* :class:`SelectorLayer`: A = E^T selects r input columns and is never a matrix: the
  forward gathers ``x[..., indices]`` (cLA, random-cLA, c3LA, random-c3LA, PaCA).

A layer holds the link being trained now and the factors of every link already merged
into the base weight (for chained methods), so that a saved run describes dW relative
to the *original* W0 as a list of links.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from genbound.adapters.registry import register_layer
from genbound.adapters.tangent import ColumnTangent, NoTangent, Tangent, factor_tangent
from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.adapters.registry import Variant


def is_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's ``Conv1D`` (GPT-2 style, weight stored (m x n))."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_linear(module: nn.Module) -> bool:
    """True for the layers adapters can wrap: ``nn.Linear`` and HF ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int, bool]:
    """``(n, m, transposed)`` of a Linear or Conv1D: outputs, inputs, stored as (m x n)."""
    w = module.weight
    if is_conv1d(module):
        return int(w.shape[1]), int(w.shape[0]), True
    return int(w.shape[0]), int(w.shape[1]), False


class AdapterLayer(nn.Module):
    """What every adapter layer says about itself (see the module docstring).

    Subclasses set ``kind`` and ``trained`` and define :meth:`tangent`,
    :meth:`link_delta` and :meth:`from_update`; ``base`` is the wrapped layer that holds
    the base weight.
    """

    #: the update kind the layer saves and rebuilds (``"lowrank"``, ``"selector"``, ...).
    kind: ClassVar[str] = ""
    #: factors that receive gradients (a rebuilt layer sets its own).
    trained: tuple[str, ...] = ()
    #: the trained factor that is zero when dW = 0.
    origin: ClassVar[str] = "B"
    #: True when the layer computes base(x) + update(x) (dW adds to the base weight).
    additive: ClassVar[bool] = True
    base: nn.Module

    def factor_names(self) -> dict[str, str]:
        """Its factors that are parameters, by name (relative to the layer), sorted."""
        return {n: n for n, _ in sorted(self.named_parameters(recurse=False))}

    def frozen_names(self) -> tuple[str, ...]:
        """Its tensors fixed by the run's seed or by the method (buffers), e.g. Asym's A."""
        return tuple(n for n, _ in self.named_buffers(recurse=False))

    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        """The tangent space of the merged weight when the factors ``trained`` train
        (:class:`~genbound.adapters.tangent.NoTangent` when unknown)."""
        raise NoTangent("adapter layer of unknown structure, skipped")

    def link_delta(self) -> torch.Tensor:  # pragma: no cover - abstract
        """dW the layer adds to its base weight now, (n x m) float64."""
        raise NotImplementedError

    @classmethod
    def from_update(cls, base: nn.Module, update: Any) -> AdapterLayer:  # pragma: no cover
        """``base`` (a Linear/Conv1D already holding W0 plus any earlier links of a chain)
        wrapped with the factors of ``update``, a checkpoint's update of this layer's kind;
        its ``trained`` names the factors that trained."""
        raise NotImplementedError


class AdaptedLayer(AdapterLayer):
    """Base class: a frozen ``base`` layer plus an adapter; ``y = base(x) + update(x)``.

    Args:
        base: the wrapped ``nn.Linear`` or ``Conv1D`` (its parameters are frozen).
        rank: r.
        scale: s multiplying the adapter's output.
        generator: source of every random draw (seeded by the run's seed).

    Subclasses define ``update(x)`` (shape (..., n)), :meth:`link_tensors`,
    :meth:`tensors_delta`, :meth:`start_link`, :meth:`for_variant` and the class
    attributes of :class:`AdapterLayer`.
    """

    trained: tuple[str, ...] = ("B",)

    def __init__(self, base: nn.Module, *, rank: int, scale: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.n, self.m, self.transposed = linear_shape(base)
        self.rank = int(rank)
        self.scale = float(scale)
        self.link = 0
        #: factors of links merged into ``base.weight`` (detached clones), oldest first.
        self.finished: list[dict[str, torch.Tensor]] = []
        #: each link's trained factors when it started, except the one that starts at zero
        #: (``origin``), as detached clones, oldest first (:meth:`record_initial`).
        self.initial: list[dict[str, torch.Tensor]] = []

    # -- to define in subclasses -------------------------------------------------
    def update(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def link_tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """The current link's factors as detached clones (``B`` and ``A`` or ``indices``)."""
        raise NotImplementedError

    def start_link(self, link: int, generator: torch.Generator) -> list[nn.Parameter]:
        """(Re)initialise the adapter for link number ``link`` (0-based).

        Returns the parameters whose optimizer state must be rebuilt.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def tensors_delta(t: dict[str, torch.Tensor], scale: float, shape: tuple[int, int]):
        """dW (n x m, float64) of one link's factors."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def for_variant(
        cls, base: nn.Module, *, variant: Variant, rank: int, scale: float, chain: int, generator
    ) -> AdaptedLayer:  # pragma: no cover - abstract
        """A new layer of ``variant`` around ``base`` (random draws from ``generator``)."""
        raise NotImplementedError

    # -- building a run ------------------------------------------------------------
    @classmethod
    def build(
        cls,
        bases: Mapping[str, nn.Module],
        *,
        variant: Variant,
        rank: int,
        scale: float,
        chain: int,
        generator: torch.Generator,
    ) -> dict[str, AdaptedLayer]:
        """The layers of one run, by module path: each base layer wrapped in module order
        (random draws from ``generator`` in that order)."""
        kw = dict(variant=variant, rank=rank, scale=scale, chain=chain, generator=generator)
        return {name: cls.for_variant(base, **kw) for name, base in bases.items()}

    @classmethod
    def check_target(cls, variant: Variant, name: str, n: int, m: int, rank: int, chain: int):
        """Raise a GenboundError when the layer cannot adapt target ``name`` (n x m)."""

    # -- shared --------------------------------------------------------------------
    def record_initial(self) -> None:
        """Record the current link's starting values of its trained factors (not the one
        that starts at zero): the data-free centre of the Gaussian certificate's prior."""
        self.initial.append(
            {k: v for k, v in self.link_tensors().items() if k in self.trained and k != self.origin}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.update(x)

    def link_delta(self) -> torch.Tensor:
        """dW of the current link, (n x m) float64."""
        return self.tensors_delta(self.link_tensors(), self.scale, (self.n, self.m))

    def delta(self) -> torch.Tensor:
        """dW relative to the original W0: the sum of every link, (n x m) float64."""
        total = self.link_delta()
        for t in self.finished:
            total = total + self.tensors_delta(t, self.scale, (self.n, self.m))
        return total

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's trainable parameters by local name (``"B"``, ``"A"``)."""
        return {k: p for k, p in self.named_parameters(recurse=False) if p.requires_grad}

    @torch.no_grad()
    def merge_link(self, generator: torch.Generator) -> list[nn.Parameter]:
        """Add the current link's dW to ``base.weight`` and start the next link.

        The function computed by the layer is unchanged (up to float rounding of the add).
        Returns the parameters whose optimizer state must be rebuilt.
        """
        tensors = self.link_tensors()
        d = self.tensors_delta(tensors, self.scale, (self.n, self.m))
        w = self.base.weight
        w.add_((d.T if self.transposed else d).to(w.dtype))
        self.finished.append(tensors)
        self.link += 1
        return self.start_link(self.link, generator)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the current link added, in stored orientation (a new tensor)."""
        d = self.link_delta()
        w = self.base.weight
        return w.detach() + (d.T if self.transposed else d).to(w.dtype)

    def link_specs(
        self, key: str, *, numbered: bool = True
    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        """Manifest link specs of every link (finished ones first) and their tensors.

        ``key`` prefixes the tensor keys: ``"<key>.link<i>.B"``, or ``"<key>.B"`` when not
        ``numbered`` (a layer with one link).
        """
        specs, tensors = [], {}
        for i, t in enumerate([*self.finished, self.link_tensors()]):
            spec: dict[str, Any] = {"kind": self.kind, **self.link_fields()}
            spec["trained"] = list(self.trained)
            prefix = f"{key}.link{i}" if numbered else key
            for name, value in t.items():
                spec[name] = f"{prefix}.{name}"
                tensors[spec[name]] = value
            specs.append(spec)
        return specs, tensors

    def link_fields(self) -> dict[str, Any]:
        """Scalar fields of a saved link besides ``kind``, ``trained`` and the tensors."""
        return {"scale": self.scale}

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, r={self.rank}, scale={self.scale:g}, link={self.link}"


@register_layer
class LowRankLayer(AdaptedLayer):
    """dW = s B A, B (n x r) zero at the start of each link, A (r x m) ~ N(0, 1/m).

    ``train_A`` (class attribute) says whether A is a trained parameter or a frozen
    buffer redrawn for every link.
    """

    kind = "lowrank"
    trained = ("A", "B")
    train_A: ClassVar[bool] = True

    @classmethod
    def for_variant(cls, base, *, variant, rank, scale, chain, generator) -> LowRankLayer:
        return cls(base, rank=rank, scale=scale, generator=generator)

    @classmethod
    def check_target(cls, variant, name, n, m, rank, chain) -> None:
        if rank > min(n, m):
            raise GenboundError(
                f"apply: rank {rank} is larger than layer {name!r} ({n} outputs x {m} inputs); "
                f"expected rank <= {min(n, m)}."
            )

    @classmethod
    @torch.no_grad()
    def from_update(cls, base: nn.Module, update: Any) -> LowRankLayer:
        """A :class:`LoraLayer` when A trained, else an :class:`AsymLayer` (A frozen)."""
        w = base.weight
        kind = LoraLayer if "A" in update.trained else AsymLayer
        gen = torch.Generator().manual_seed(0)  # A's draw is overwritten
        layer = kind(base, rank=update.B.shape[1], scale=update.scale, generator=gen)
        layer.A.copy_(update.A.to(w.dtype))
        layer.B.copy_(update.B.to(w.dtype))
        layer.trained = tuple(f for f in ("A", "B") if f in update.trained)
        return layer.to(w.device)

    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        return factor_tangent(self.n, self.m, self.A, self.B, trained)

    def __init__(self, base: nn.Module, *, rank: int, scale: float, generator: torch.Generator):
        super().__init__(base, rank=rank, scale=scale)
        w = base.weight
        self.B = nn.Parameter(torch.zeros(self.n, self.rank, dtype=w.dtype, device=w.device))
        a = torch.zeros(self.rank, self.m, dtype=w.dtype, device=w.device)
        if self.train_A:
            self.A = nn.Parameter(a)
        else:
            self.register_buffer("A", a)
        self.start_link(0, generator)

    @torch.no_grad()
    def start_link(self, link: int, generator: torch.Generator) -> list[nn.Parameter]:
        a = torch.randn(self.rank, self.m, generator=generator, dtype=torch.float64)
        self.A.copy_(a / math.sqrt(self.m))
        self.B.zero_()
        return [self.B, self.A] if self.train_A else [self.B]

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.T) @ self.B.T * self.scale

    def link_tensors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B.detach().clone(), "A": self.A.detach().clone()}

    @staticmethod
    def tensors_delta(t, scale, shape):
        return scale * (t["B"].double() @ t["A"].double())


class LoraLayer(LowRankLayer):
    """LoRA: B (n x r) = 0 and A (r x m) ~ N(0, 1/m) at init; both train."""

    trained = ("A", "B")
    train_A = True


class AsymLayer(LowRankLayer):
    """Asym-LoRA: A (r x m) ~ N(0, 1/m) is a frozen buffer; only B (n x r, zero at init) trains."""

    trained = ("B",)
    train_A = False


class _SelectorLinear(torch.autograd.Function):
    """y = x W0^T + b + s x[:, idx] B^T for a frozen W0, fused (x is (N x m), 2-D).

    Forward: one addmm for the base and an in-place addmm of the (N x r) gathered columns.
    Backward: grad_x = g W0 with s (g B) added into its ``idx`` columns in place, and
    grad_B = s g^T x[:, idx]. Only the (N x r) gathered inputs are saved; no (N x m)
    temporary is allocated besides grad_x itself.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, B, idx, scale, transposed):
        w = weight if transposed else weight.T  # (m x n)
        xs = x.index_select(1, idx)
        y = torch.addmm(bias, x, w) if bias is not None else x @ w
        y.addmm_(xs, B.T, alpha=scale)
        ctx.save_for_backward(weight, B, xs, idx)
        ctx.scale, ctx.transposed = scale, transposed
        return y

    @staticmethod
    def backward(ctx, g):
        weight, B, xs, idx = ctx.saved_tensors
        grad_x = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ (weight.T if ctx.transposed else weight)
            grad_x.index_add_(1, idx, g @ B, alpha=ctx.scale)
        if ctx.needs_input_grad[3]:
            grad_B = (g.T @ xs).mul_(ctx.scale)
        return grad_x, None, None, grad_B, None, None, None


@register_layer
class SelectorLayer(AdaptedLayer):
    """dW[:, indices] = s B: A = E^T selects r input columns, applied as a gather.

    ``plan`` gives the (r,) int64 column indices of each link; the adapter's output is
    ``x.index_select(-1, indices) @ B.T * s`` (no dense selector, no matmul with it).
    B (n x r) is zero at the start of each link. When the base weight and bias are frozen
    (always, after ``apply``) the base layer and the gather run as one fused autograd
    function (:class:`_SelectorLinear`); set ``fused = False`` to compare against the
    unfused path.
    """

    kind = "selector"
    trained = ("B",)
    #: use the fused base + gather function when the base layer is frozen.
    fused: ClassVar[bool] = True

    def __init__(self, base: nn.Module, *, rank: int, scale: float, plan: list[torch.Tensor]):
        super().__init__(base, rank=rank, scale=scale)
        w = base.weight
        self.plan = [p.to(torch.int64) for p in plan]
        self.B = nn.Parameter(torch.zeros(self.n, self.rank, dtype=w.dtype, device=w.device))
        self.register_buffer("indices", self.plan[0].to(w.device).clone())

    @classmethod
    def for_variant(cls, base, *, variant, rank, scale, chain, generator) -> SelectorLayer:
        """The variant's ``plan`` gives the columns of every link."""
        plan = variant.plan(base_inputs(base), rank, chain, generator)
        return cls(base, rank=rank, scale=scale, plan=plan)

    @classmethod
    def check_target(cls, variant, name, n, m, rank, chain) -> None:
        if rank * chain > m:
            what = f"k r = {chain} x {rank} = {rank * chain}" if chain > 1 else f"rank {rank}"
            raise GenboundError(
                f"apply: method {variant.name!r} selects {what} input columns of layer "
                f"{name!r}, which has only m = {m} inputs; expected k r <= {m}."
            )

    @classmethod
    @torch.no_grad()
    def from_update(cls, base: nn.Module, update: Any) -> SelectorLayer:
        w = base.weight
        layer = cls(base, rank=update.B.shape[1], scale=update.scale, plan=[update.indices])
        layer.B.copy_(update.B.to(w.dtype))
        layer.trained = tuple(f for f in ("A", "B") if f in update.trained)
        return layer.to(w.device)

    def tangent(self, trained: tuple[str, ...]) -> Tangent:
        if "B" not in trained:
            return factor_tangent(self.n, self.m, None, self.B, trained)
        return ColumnTangent(self.n, self.m, self.indices)

    @torch.no_grad()
    def start_link(self, link: int, generator: torch.Generator) -> list[nn.Parameter]:
        self.indices.copy_(self.plan[min(link, len(self.plan) - 1)])
        self.B.zero_()
        return [self.B]

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.indices) @ self.B.T * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        frozen = not base.weight.requires_grad and (
            base.bias is None or not base.bias.requires_grad
        )
        if not (self.fused and frozen) or torch.is_autocast_enabled() or x.dtype != self.B.dtype:
            return base(x) + self.update(x)
        y = _SelectorLinear.apply(
            x.reshape(-1, self.m),
            base.weight,
            base.bias,
            self.B,
            self.indices,
            self.scale,
            self.transposed,
        )
        return y.reshape(*x.shape[:-1], self.n)

    def link_tensors(self) -> dict[str, torch.Tensor]:
        return {"B": self.B.detach().clone(), "indices": self.indices.detach().cpu().clone()}

    @staticmethod
    def tensors_delta(t, scale, shape):
        d = torch.zeros(shape, dtype=torch.float64, device=t["B"].device)
        d.index_add_(1, t["indices"].to(d.device), scale * t["B"].double())
        return d


def base_inputs(base: nn.Module) -> int:
    """m, the number of inputs of a Linear/Conv1D."""
    return linear_shape(base)[1]
