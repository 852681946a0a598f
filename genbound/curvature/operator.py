"""Hessian-vector products of an :class:`~genbound.tasks.objective.Objective`.

Two coordinate systems:

* :class:`HessianOperator`: the Hessian of the mean loss with respect to chosen
  parameters (the trained adapter factors by default, so in (A, B) coordinates for LoRA).
* :class:`MergedHessianOperator`: the Hessian with respect to the merged weight W of each
  adapted layer, restricted to the tangent space T of updates the adapter can reach
  (LoRA: T = {s (dB A + B dA)}; B-only variants: T = {s dB A}; DoRA: its magnitude and
  direction, see :func:`find_adapted`), so a number does not depend on how dW = s B A is
  factored. Other selected parameters (a trained head) keep their own coordinates.

The mean loss is the sum of per-example losses over all batches divided by the number
of examples, so a short last batch is not over-weighted. Products are float64 vectors
(flat, in the order of :attr:`names`); the model computes in its own dtype.

Use an operator inside ``with op:`` (entry points do): that enters
:func:`~genbound.curvature.context.analysis_mode` and, with ``cache_graphs``, keeps each
batch's gradient graph for all products (one forward and backward per batch in total,
then one double backward per batch and product). A product outside ``with`` opens a
session for itself.

Kept graphs hold the batches' activations. They are kept batch by batch while the
tensors they save (parameters not counted: they are shared) stay within
:data:`GRAPH_CACHE_BYTES`; the batches beyond are recomputed for every product, so a large
model's curvature runs in bounded memory at the cost of a forward pass per such batch.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Sequence

import torch
from torch import nn

from genbound.adapters.tangent import AdaptedModule
from genbound.adapters.views import adapted_modules
from genbound.curvature.context import analysis_mode
from genbound.errors import GenboundError

__all__ = [
    "FACTORS",
    "MERGED",
    "AdaptedModule",
    "HessianOperator",
    "MergedHessianOperator",
    "TangentCoordinateOperator",
    "find_adapted",
    "select_parameters",
]

#: Bytes of saved activations kept across Hessian-vector products (4 GiB).
GRAPH_CACHE_BYTES = 4 * 2**30

FACTORS = "factors (A, B)"
MERGED = "merged dW"


def select_parameters(
    model: nn.Module, trainable: Sequence[str], params: str | Sequence[str] = "trainable"
) -> tuple[list[str], str]:
    """Names of the parameters ``params`` selects, and a description of the selection.

    ``"trainable"``: the objective's trainable names; ``"all"``: every parameter; a list of
    glob patterns (``"*.lora_B.*"``) or regular expressions (prefixed ``"re:"``).
    """
    names = [n for n, _ in model.named_parameters()]
    if isinstance(params, str) and params == "trainable":
        known = set(names)
        missing = [n for n in trainable if n not in known]
        if missing:
            raise GenboundError(
                f"The objective names trainable parameters the model does not have "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                f"expected names as in model.named_parameters()."
            )
        chosen = [n for n in names if n in set(trainable)]
        desc = "trainable"
    elif isinstance(params, str) and params == "all":
        chosen, desc = names, "all"
    else:
        pats = [params] if isinstance(params, str) else list(params)
        chosen = [n for n in names if any(_match(p, n) for p in pats)]
        desc = "pattern " + ", ".join(pats)
    if not chosen:
        raise GenboundError(
            f"The parameter selection {params!r} matches no parameter of the model; "
            f"expected 'trainable' (with a non-empty objective.trainable), 'all', or glob "
            f"patterns such as '*.lora_B.*' (prefix 're:' for a regular expression)."
        )
    return chosen, desc


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def check_columns(vs: torch.Tensor, size: int) -> None:
    """A GenboundError unless ``vs`` holds vectors of length ``size`` as columns."""
    if vs.ndim != 2 or vs.shape[0] != size:
        raise GenboundError(
            f"Hessian products take vectors of length {size} (as columns); "
            f"found shape {tuple(vs.shape)}."
        )


class _Base:
    """Shared machinery: inputs to differentiate, graph cache, session handling."""

    parameterization: str = FACTORS

    def __init__(self, objective, cache_graphs: bool = True, graph_bytes: int = GRAPH_CACHE_BYTES):
        self.objective = objective
        self.model: nn.Module = objective.model
        self.cache_graphs = bool(cache_graphs)
        self.graph_bytes = int(graph_bytes)
        self.num_products = 0
        #: batches whose graphs are kept, and the bytes their saved tensors take
        self.kept_batches = 0
        self.kept_bytes = 0
        self._graphs: list[tuple[torch.Tensor, ...]] | None = None
        self._session: contextlib.ExitStack | None = None
        if objective.num_examples <= 0:
            raise GenboundError("The objective has no examples; expected at least one batch.")
        self._n = objective.total_weight  # the loss is the weighted mean over units

    # -- to define -------------------------------------------------------------------
    def _inputs(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self, stack: contextlib.ExitStack) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Projection onto the operator's domain (identity here)."""
        return v

    # -- session -----------------------------------------------------------------------
    def __enter__(self):
        if self._session is None:
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(analysis_mode(self.model))
                self._prepare(stack)
            except BaseException:
                stack.close()
                raise
            self._session = stack
        return self

    def __exit__(self, *exc) -> None:
        self._graphs = None
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    # -- products ----------------------------------------------------------------------
    def _batch_grads(self, batch, saved: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """The batch's gradient with its graph; ``saved`` (one int) accumulates the bytes
        of the non-parameter tensors the graph saves."""
        inputs = self._inputs()
        hooks = contextlib.nullcontext()
        if saved is not None:
            shared = {p.data_ptr() for p in self.model.parameters()}

            def pack(t: torch.Tensor) -> torch.Tensor:
                if t.data_ptr() not in shared:
                    saved[0] += t.numel() * t.element_size()
                return t

            hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with torch.enable_grad(), hooks:
            loss = self.objective.weighted_sum(self.objective.loss(self.model, batch), batch)
            loss = loss / self._n
            return torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)

    def _grads(self):
        """Yield each batch's gradient (with graph); graphs are kept across products, if
        allowed, for as many leading batches as :attr:`graph_bytes` holds."""
        batches = self.objective.batches
        # a graph not kept is released before the next batch's is built (never two at once)
        if self._graphs is not None:
            yield from self._graphs
            for batch in batches[len(self._graphs) :]:
                yield self._batch_grads(batch)
            return
        keep = [] if self.cache_graphs and self._session is not None else None
        for batch in batches:
            if keep is None:
                yield self._batch_grads(batch)
                continue
            saved = [0]
            g = self._batch_grads(batch, saved)
            if self.kept_bytes + saved[0] <= self.graph_bytes:
                keep.append(g)
                self.kept_bytes += saved[0]
            else:  # the budget is spent: this and later batches are recomputed
                self._graphs, self.kept_batches = keep, len(keep)
                keep = None
            yield g
            del g
        if keep is not None:
            self._graphs, self.kept_batches = keep, len(keep)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """H V for V (size x p) float64; returns (size x p) float64."""
        check_columns(vs, self.size)
        if self._session is None:
            with self:
                return self.matmat(vs)
        out = self._products(vs)
        self.num_products += vs.shape[1]
        return out

    def _products(self, vs: torch.Tensor) -> torch.Tensor:
        """H V in the operator's coordinates (here the inputs' own, projected)."""
        return self.project(self._input_products(self.project(vs)))

    def _input_products(self, vs: torch.Tensor) -> torch.Tensor:
        """H_x V for V (sum of input sizes x p), the Hessian in the inputs' own coordinates."""
        inputs = self._inputs()
        chunks = self._split(vs)
        out = torch.zeros_like(vs, dtype=torch.float64)
        for g in self._grads():
            used = [
                (gi, x, c)
                for gi, x, c in zip(g, inputs, chunks, strict=True)
                if gi is not None and gi.requires_grad  # a constant gradient: zero curvature
            ]
            if not used:
                continue
            gs = [u[0] for u in used]
            xs = [u[1] for u in used]
            for j in range(vs.shape[1]):
                outs = [u[2][j] for u in used]
                hv = torch.autograd.grad(
                    gs, xs, grad_outputs=outs, retain_graph=True, allow_unused=True
                )
                out[:, j] += self._flat(hv, xs)
            del g, used, gs  # this batch's graph, unless kept, goes before the next is built
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat float64 vector v (size,)."""
        return self.matmat(v.reshape(-1, 1))[:, 0]

    def _split(self, vs: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per input, the p columns reshaped to the input's shape and dtype."""
        chunks, start = [], 0
        for x in self._inputs():
            k = x.numel()
            block = vs[start : start + k]
            chunks.append([block[:, j].reshape(x.shape).to(x.dtype) for j in range(vs.shape[1])])
            start += k
        return chunks

    def _flat(self, hv, xs) -> torch.Tensor:
        ids = {id(x): h for x, h in zip(xs, hv, strict=True)}
        parts = []
        for x in self._inputs():
            h = ids.get(id(x))
            parts.append(
                torch.zeros(x.numel(), dtype=torch.float64)
                if h is None
                else h.detach().reshape(-1).to(torch.float64)
            )
        return torch.cat(parts)


class HessianOperator(_Base):
    """Hessian of the objective's mean loss with respect to selected parameters.

    Args:
        objective: model, batches, per-example loss, trainable names.
        params: ``"trainable"`` (default), ``"all"`` or a list of glob / ``"re:"`` patterns.
        cache_graphs: keep every batch's gradient graph for the session (memory: one
            double-backward graph per batch); False recomputes it for every product.
    """

    parameterization = FACTORS

    def __init__(self, objective, params: str | Sequence[str] = "trainable", *, cache_graphs=True):
        super().__init__(objective, cache_graphs)
        self.names, self.params_description = select_parameters(
            self.model, objective.trainable, params
        )
        lookup = dict(self.model.named_parameters())
        self._params = [lookup[n] for n in self.names]
        self.shapes = [tuple(p.shape) for p in self._params]
        self.size = sum(p.numel() for p in self._params)
        self.dimension = self.size
        self.dtype = self._params[0].dtype

    def _inputs(self) -> list[torch.Tensor]:
        return self._params

    def _prepare(self, stack: contextlib.ExitStack) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self._params:
            p.requires_grad_(True)


# -- merged dW -----------------------------------------------------------------------


def find_adapted(
    model: nn.Module, selected: Sequence[str]
) -> tuple[list[AdaptedModule], list[str]]:
    """Adapted modules with a selected factor, and notes on modules that were skipped.

    Every adapter layer says which factors it has and what its tangent space is
    (:func:`genbound.adapters.views.adapted_modules`): genbound's low-rank, selector,
    DoRA and VeRA layers, and PEFT LoRA layers (one active adapter, no DoRA). LoRA-like
    layers reach {s (dB A + B dA)} = {Qb Y + Z Qa^T} (Qb: basis of col(B), Qa: of row(A);
    a factor that does not train drops its term), selectors the columns they select;
    DoRA (:meth:`genbound.adapters.dora.DoraLayer.tangent`) adds its magnitude's row
    directions and is recognised only with its magnitude selected; VeRA
    (:class:`genbound.adapters.vera.VeraTangent`) moves along its two scaling vectors.
    """
    return adapted_modules(model, selected)


class MergedHessianOperator(_Base):
    """Hessian with respect to the merged weights of adapted layers, on their tangent spaces.

    Coordinates: for each adapted layer (in model order) its (n x m) dW, row-major,
    then every other selected parameter (a head) as in :class:`HessianOperator`. The
    operator is P_T H_W P_T: its non-zero spectrum is the Hessian restricted to the
    updates the adapter can reach. :attr:`skipped` lists adapted modules of unknown
    structure (left out, with their parameters).

    Products never form a dense dW direction in the model. Each tangent space is the image
    of a linear map J from small coordinates, T = {Qb Y + Z Qa^T} (Qb: basis of col(B),
    Qa: basis of row(A); a trained factor alone keeps one term; a selector is
    {Z on the selected columns}), added to the layer's output as a rank-r term. Since J
    is linear, the Hessian in (Y, Z) is exactly J^T H_W J: a product maps v to
    coordinates u with J u = P_T v, takes J^T H_W J u by double backward, and rebuilds
    P_T H_W J u from J^T h = (Qb^T h, h Qa). A product costs what one in the factors does.
    """

    parameterization = MERGED

    def __init__(self, objective, params: str | Sequence[str] = "trainable", *, cache_graphs=True):
        super().__init__(objective, cache_graphs)
        chosen, self.params_description = select_parameters(self.model, objective.trainable, params)
        self.layers, self.skipped = find_adapted(self.model, chosen)
        factor_names = set()
        for layer in self.layers:
            factor_names.update(layer.factor_names.values())
        skipped_prefixes = tuple(s.split(":")[0] + "." for s in self.skipped)
        lookup = dict(self.model.named_parameters())
        self.other_names = [
            n for n in chosen if n not in factor_names and not n.startswith(skipped_prefixes)
        ]
        self._others = [lookup[n] for n in self.other_names]
        dtype = next(iter(lookup.values())).dtype
        self._coords = [_TangentCoordinates(layer, dtype) for layer in self.layers]
        self.names = [f"{lay.name} (dW)" for lay in self.layers] + self.other_names
        self.size = sum(lay.n * lay.m for lay in self.layers) + sum(p.numel() for p in self._others)
        self.dimension = sum(lay.tangent_dimension for lay in self.layers) + sum(
            p.numel() for p in self._others
        )
        self.dtype = dtype
        if not self.layers:
            raise GenboundError(
                "Merged-dW curvature needs adapted layers with known factors (PEFT LoRA, "
                "genbound adapter layers) among the selected parameters; none "
                "was found" + (f" ({'; '.join(self.skipped)})" if self.skipped else "") + "."
            )

    def _inputs(self) -> list[torch.Tensor]:
        return [t for c in self._coords for t in c.tensors] + self._others

    def in_coordinates(self) -> TangentCoordinateOperator:
        """This operator with tangent-coordinate vectors (:class:`TangentCoordinateOperator`)."""
        return TangentCoordinateOperator(self)

    def _prepare(self, stack: contextlib.ExitStack) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self._others:
            p.requires_grad_(True)
        for layer, coords in zip(self.layers, self._coords, strict=True):
            handle = layer.module.register_forward_hook(coords.hook)
            stack.callback(handle.remove)

    def _blocks(self, vs: torch.Tensor):
        """Yield (layer, coordinates, rows) of each layer's dW block in vs (size x p)."""
        start = 0
        for layer, coords in zip(self.layers, self._coords, strict=True):
            k = layer.n * layer.m
            yield layer, coords, slice(start, start + k)
            start += k

    def project(self, vs: torch.Tensor) -> torch.Tensor:
        out, p = vs.clone(), vs.shape[1]
        for layer, _, rows in self._blocks(vs):
            block = vs[rows].T.reshape(p, layer.n, layer.m)
            out[rows] = layer.project(block.double()).reshape(p, -1).T
        return out

    def _products(self, vs: torch.Tensor) -> torch.Tensor:
        p = vs.shape[1]
        parts, others_start = [], 0
        for layer, coords, rows in self._blocks(vs):
            block = vs[rows].T.reshape(p, layer.n, layer.m).double()
            parts += [u.reshape(p, -1).T for u in coords.to_coordinates(block)]
            others_start = rows.stop
        parts.append(vs[others_start:].double())
        hc = self._input_products(torch.cat(parts))
        out = torch.empty_like(vs, dtype=torch.float64)
        start = 0
        for _, coords, rows in self._blocks(vs):
            pieces = []
            for t in coords.tensors:
                pieces.append(hc[start : start + t.numel()].T.reshape(p, *t.shape))
                start += t.numel()
            out[rows] = coords.from_coordinates(pieces).reshape(p, -1).T
        out[others_start:] = hc[start:]
        return out


#: Merged-dW vectors longer than this (2^24 entries, 128 MiB in float64) are replaced by
#: tangent coordinates in reports (:meth:`MergedHessianOperator.in_coordinates`).
COORDINATES_ABOVE = 2**24


class TangentCoordinateOperator:
    """A :class:`MergedHessianOperator` whose vectors are the tangent spaces' own
    coordinates (each adapted layer's coordinate tensors, e.g. Y (rb x m) and Z (n x ra),
    flattened in order, then the other selected parameters) instead of n x m dW blocks.

    It is J^T H_W J, the same operator as P_T H_W P_T seen through the partial isometry J:
    on the coordinates J^T J projects onto (:meth:`project`), the spectrum, trace and
    density are those of the merged operator, while a vector has sum r (n + m) entries
    rather than sum n m (for LoRA r = 16 on the attention of a 1.1B model, 4.5 million
    instead of 208 million: 36 MB instead of 1.7 GB in float64). Products are the merged
    operator's own (its session, graphs and product count).
    """

    def __init__(self, merged: MergedHessianOperator):
        self.merged = merged
        self.parameterization = merged.parameterization
        self.layers = merged.layers
        self.names = merged.names
        self.dimension = merged.dimension
        self.dtype = merged.dtype
        self._sizes = [sum(t.numel() for t in c.tensors) for c in merged._coords]
        self.size = sum(self._sizes) + sum(p.numel() for p in merged._others)

    @property
    def num_products(self) -> int:
        return self.merged.num_products

    def __enter__(self):
        self.merged.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.merged.__exit__(*exc)

    def project(self, cs: torch.Tensor) -> torch.Tensor:
        """J^T J C for C (size x p): the coordinates of the tangent vectors C stands for."""
        out, p, start = cs.clone(), cs.shape[1], 0
        for coords, k in zip(self.merged._coords, self._sizes, strict=True):
            parts, i = [], start
            for t in coords.tensors:
                parts.append(cs[i : i + t.numel()].T.reshape(p, *t.shape).double())
                i += t.numel()
            back = coords.to_coordinates(coords.tangent.from_coordinates(parts))
            out[start : start + k] = torch.cat([u.reshape(p, -1) for u in back], dim=1).T
            start += k
        return out

    def matmat(self, cs: torch.Tensor) -> torch.Tensor:
        """J^T H_W J C for C (size x p) float64."""
        check_columns(cs, self.size)
        if self.merged._session is None:
            with self:
                return self.matmat(cs)
        out = self.merged._input_products(self.project(cs))
        self.merged.num_products += cs.shape[1]
        return self.project(out)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1, 1))[:, 0]


class _TangentCoordinates:
    """The coordinates of one adapted layer's tangent space and the maps to them.

    ``tensors``: the zero coordinate tensors the model is differentiated at (see
    :class:`~genbound.adapters.tangent.Tangent`; e.g. Y (rb x m) when A trains, Z (n x ra)
    when B trains; a selector: Z (n x c) on its c columns; then DoRA's magnitude block).
    """

    def __init__(self, layer: AdaptedModule, dtype: torch.dtype):
        self.layer = layer
        self.tangent = layer.tangent
        self.tensors = [
            torch.zeros(s, dtype=dtype, requires_grad=True) for s in self.tangent.shapes
        ]
        self._added = self.tangent.bind(dtype)

    def hook(self, module, args, output):
        """Add x (J u)^T to the layer's output (x: the layer's input, u: the coordinates)."""
        return self._added(output, args[0], self.tensors)

    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u with J u = P_T X for X (p x n x m), float64."""
        return self.tangent.to_coordinates(x)

    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """P_T h (p x n x m) from J^T h (the coordinates' parts of the gradient product)."""
        return self.tangent.from_coordinates(parts)
