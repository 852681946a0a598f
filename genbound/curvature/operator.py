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
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from genbound.curvature.context import analysis_mode
from genbound.errors import GenboundError

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


class _Base:
    """Shared machinery: inputs to differentiate, graph cache, session handling."""

    parameterization: str = FACTORS

    def __init__(self, objective, cache_graphs: bool = True):
        self.objective = objective
        self.model: nn.Module = objective.model
        self.cache_graphs = bool(cache_graphs)
        self.num_products = 0
        self._graphs: list[tuple[torch.Tensor, ...]] | None = None
        self._session: contextlib.ExitStack | None = None
        n = objective.num_examples
        if n <= 0:
            raise GenboundError("The objective has no examples; expected at least one batch.")
        self._n = n

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
    def _batch_grads(self, batch) -> tuple[torch.Tensor, ...]:
        inputs = self._inputs()
        with torch.enable_grad():
            loss = self.objective.loss(self.model, batch).sum() / self._n
            return torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)

    def _grads(self):
        """Yield each batch's gradient (with graph), cached across products if allowed."""
        if self._graphs is not None:
            yield from self._graphs
            return
        keep = [] if self.cache_graphs and self._session is not None else None
        for batch in self.objective.batches:
            g = self._batch_grads(batch)
            if keep is not None:
                keep.append(g)
            yield g
        if keep is not None:
            self._graphs = keep

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """H V for V (size x p) float64; returns (size x p) float64."""
        if vs.ndim != 2 or vs.shape[0] != self.size:
            raise GenboundError(
                f"Hessian products take vectors of length {self.size} (as columns); "
                f"found shape {tuple(vs.shape)}."
            )
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


@dataclass(frozen=True, eq=False)
class AdaptedModule:
    """An adapted layer as the merged operator sees it.

    Attributes:
        name: module path.
        module: the adapted module (its output gets ``x @ E^T`` added).
        n, m: outputs and inputs of the merged weight.
        kind: ``"peft-lora"``, ``"lowrank"``, ``"selector"`` or ``"dora"``.
        factor_names: parameter names of the factors (``"B"``, ``"A"``, ``"magnitude"`` as
            present).
        trained: which factors are in the selection (``("A", "B")``, ``("B",)``, ``("A",)``;
            DoRA adds ``"magnitude"``).
        qb: orthonormal basis of the column space dA reaches (n x rb): col(B), for DoRA
            col(diag(g) B); None when A is not trained.
        qa: orthonormal basis of row(A) as columns (m x ra), or None when B is not trained.
        cols: for a selector, the selected input columns (the row space of A = E^T).
        rows: DoRA only: ``(U, M)`` spanning what its magnitude adds beyond qb and qa, the
            matrices (I - Qb Qb^T) diag(M c) U for c in R^k, orthonormal in c. U (n x m)
            holds the unit rows of V = W0 + s B A with row(A) removed; M (n x k).
    """

    name: str
    module: nn.Module
    n: int
    m: int
    kind: str
    factor_names: dict
    trained: tuple[str, ...]
    qb: torch.Tensor | None
    qa: torch.Tensor | None
    cols: torch.Tensor | None
    rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def _off_b(self, x: torch.Tensor) -> torch.Tensor:
        """(I - Qb Qb^T) X for X (... x n x q)."""
        return x if self.qb is None else x - self.qb @ (self.qb.T @ x)

    def row_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """DoRA: the (p x k) coordinates of X (p x n x m) along the magnitude block."""
        u, mat = self.rows
        return (self._off_b(x) * u).sum(-1) @ mat

    def row_directions(self, c: torch.Tensor) -> torch.Tensor:
        """DoRA: the (p x n x m) matrices of coordinates c (p x k) in the magnitude block."""
        u, mat = self.rows
        return self._off_b((c @ mat.T)[..., None] * u)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P_T X for X (p x n x m), float64."""
        if self.cols is not None:  # selector: dW = dB E^T keeps only the selected columns
            out = torch.zeros_like(x)
            out[..., self.cols] = x[..., self.cols]
            return out
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

    @property
    def tangent_dimension(self) -> int:
        if self.cols is not None:
            return int(self.cols.numel()) * self.n
        ra = 0 if self.qa is None else self.qa.shape[1]
        rb = 0 if self.qb is None else self.qb.shape[1]
        k = 0 if self.rows is None else self.rows[1].shape[1]
        return ra * self.n + rb * self.m - ra * rb + k


def _basis(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of x (float64), by SVD with a rank cutoff."""
    u, s, _ = torch.linalg.svd(x.detach().double(), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0]
    keep = s > s[0] * max(x.shape) * torch.finfo(x.dtype).eps
    return u[:, keep]


def find_adapted(
    model: nn.Module, selected: Sequence[str]
) -> tuple[list[AdaptedModule], list[str]]:
    """Adapted modules with a selected factor, and notes on modules that were skipped.

    Recognised by duck typing: PEFT LoRA layers (``lora_A``/``lora_B`` ModuleDicts and
    ``scaling``, one active adapter, no DoRA), genbound low-rank layers (``B``, ``A``,
    ``base``), selector layers (``B``, ``indices``, ``base``) and DoRA layers
    (:class:`~genbound.adapters.dora.DoraLayer`: ``magnitude``, ``B``, ``A``, ``base``).

    DoRA's W = diag(g) V, g = magnitude / ||V|| (row norms), V = W0 + s B A, moves along
    diag(g) {s (dB A + B dA)} plus, for each output i, the row direction e_i v_i^T / ||v_i||
    of its magnitude (the part of dV along v_i is a magnitude change too). Its tangent
    space is {Qb Y + Z Qa^T} (Qb: basis of col(diag(g) B), Qa: of row(A)) plus the
    magnitude directions' parts outside it, (I - Qb Qb^T) e_i u_i^T with u_i the unit row
    v_i / ||v_i|| minus its part in row(A), orthonormalised through their (n x n) Gram
    matrix (eigenvalues below max(n, m) eps of the largest dropped). A DoRA layer is
    recognised only with its magnitude selected; a magnitude of exactly zero makes its
    row's B and A directions unreachable, which this space does not model.
    """
    selected = set(selected)
    found, notes = [], []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        own = {n for n, _ in mod.named_parameters(recurse=True)}
        if not any(prefix + n in selected for n in own):
            continue
        if isinstance(getattr(mod, "lora_A", None), nn.ModuleDict) and hasattr(mod, "lora_B"):
            active = [a for a in _active(mod) if a in mod.lora_A]
            dora = getattr(mod, "lora_magnitude_vector", None)
            if len(active) != 1 or (dora is not None and active and active[0] in dora):
                notes.append(
                    f"{name}: PEFT layer with {len(active)} active adapters or DoRA, skipped"
                )
                continue
            a = active[0]
            fn = {"A": f"{prefix}lora_A.{a}.weight", "B": f"{prefix}lora_B.{a}.weight"}
            A, B = mod.lora_A[a].weight, mod.lora_B[a].weight
            found.append(_make(name, mod, "peft-lora", fn, A, B, None, selected))
        elif hasattr(mod, "B") and hasattr(mod, "base") and isinstance(mod.B, torch.Tensor):
            fn = {"B": f"{prefix}B"}
            if isinstance(getattr(mod, "magnitude", None), torch.Tensor):
                fn.update(A=f"{prefix}A", magnitude=f"{prefix}magnitude")
                if fn["magnitude"] not in selected:
                    notes.append(f"{name}: DoRA layer without its magnitude selected, skipped")
                else:
                    found.append(_make_dora(name, mod, fn, selected))
            elif hasattr(mod, "indices") and not hasattr(mod, "A"):
                found.append(_make(name, mod, "selector", fn, None, mod.B, mod.indices, selected))
            elif isinstance(getattr(mod, "A", None), torch.Tensor):
                if isinstance(mod.A, nn.Parameter):
                    fn["A"] = f"{prefix}A"
                found.append(_make(name, mod, "lowrank", fn, mod.A, mod.B, None, selected))
            else:
                notes.append(f"{name}: adapter layer of unknown structure, skipped")
    return found, notes


def _active(mod: nn.Module) -> list[str]:
    act = getattr(mod, "active_adapters", None)
    if act is None:
        act = getattr(mod, "active_adapter", None)
    if isinstance(act, str):
        return [act]
    return list(act or [])


def _make(name, mod, kind, fn, A, B, cols, selected) -> AdaptedModule:
    n = B.shape[0]
    m = A.shape[1] if A is not None else _inputs_of(mod)
    trained = tuple(k for k in ("A", "B") if k in fn and fn[k] in selected)
    qb = _basis(B) if "A" in trained else None
    qa = None
    if "B" in trained and cols is None:
        qa = _basis(A.T)
    if cols is not None and "B" in trained:
        cols = torch.unique(cols.detach().to(torch.int64))  # the set of selected columns
    else:
        cols = None
    return AdaptedModule(
        name=name,
        module=mod,
        n=int(n),
        m=int(m),
        kind=kind,
        factor_names=fn,
        trained=trained,
        qb=qb,
        qa=qa,
        cols=cols,
    )


@torch.no_grad()
def _make_dora(name, mod, fn, selected) -> AdaptedModule:
    """The tangent space of a DoRA layer (see :func:`find_adapted`)."""
    trained = tuple(k for k in ("A", "B", "magnitude") if fn[k] in selected)
    v = mod.direction().detach().double()
    norms = torch.linalg.vector_norm(v, dim=1)
    gain = mod.magnitude.detach().double() / norms
    qb = _basis(gain[:, None] * mod.B.detach().double()) if "A" in trained else None
    qa = _basis(mod.A.detach().double().T) if "B" in trained else None
    u = v / norms[:, None]
    if qa is not None:
        u = u - (u @ qa) @ qa.T
    gram = u @ u.T  # Gram matrix of (I - Qb Qb^T) e_i u_i^T: (I - Qb Qb^T) times U U^T
    if qb is not None:
        gram = gram * (torch.eye(len(gram), dtype=torch.float64) - qb @ qb.T)
    lam, vecs = torch.linalg.eigh(gram)
    eps = torch.finfo(mod.B.dtype).eps
    keep = lam > lam.max().clamp_min(0) * max(v.shape) * eps
    mat = vecs[:, keep] / lam[keep].sqrt()
    return AdaptedModule(
        name=name,
        module=mod,
        n=int(v.shape[0]),
        m=int(v.shape[1]),
        kind="dora",
        factor_names=fn,
        trained=trained,
        qb=qb,
        qa=qa,
        cols=None,
        rows=(u, mat) if bool(keep.any()) else None,
    )


def _inputs_of(mod: nn.Module) -> int:
    if hasattr(mod, "m"):
        return int(mod.m)
    base = getattr(mod, "base", None) or getattr(mod, "base_layer", None)
    return int(getattr(base, "in_features", 0) or base.weight.shape[1])


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
                "genbound low-rank or selector layers) among the selected parameters; none "
                "was found" + (f" ({'; '.join(self.skipped)})" if self.skipped else "") + "."
            )

    def _inputs(self) -> list[torch.Tensor]:
        return [t for c in self._coords for t in c.tensors] + self._others

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


class _TangentCoordinates:
    """The coordinates (Y, Z) of one adapted layer's tangent space and the maps to them.

    ``tensors``: the zero coordinate tensors the model is differentiated at (Y (rb x m)
    when A trains, Z (n x ra) when B trains; a selector: Z (n x c) on its c columns; then
    DoRA's magnitude block c (k,)).
    """

    def __init__(self, layer: AdaptedModule, dtype: torch.dtype):
        self.layer = layer
        self.qb, self.qa, self.cols = layer.qb, layer.qa, layer.cols
        shapes = []
        if self.cols is not None:
            shapes.append((layer.n, int(self.cols.numel())))
        else:
            if self.qb is not None:
                shapes.append((self.qb.shape[1], layer.m))  # Y
            if self.qa is not None:
                shapes.append((layer.n, self.qa.shape[1]))  # Z
        if layer.rows is not None:
            shapes.append((layer.rows[1].shape[1],))  # c
        self.tensors = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in shapes]
        self._qb = self.qb.to(dtype) if self.qb is not None else None
        self._qa_t = self.qa.T.to(dtype).contiguous() if self.qa is not None else None
        self._rows = None
        if layer.rows is not None:
            self._rows = tuple(t.to(dtype).contiguous() for t in layer.rows)

    def hook(self, module, args, output):
        """Add x (Qb Y + Z Qa^T)^T (or x[..., cols] Z^T) to the layer's output."""
        x = args[0]
        if self.cols is not None:
            return output + nn.functional.linear(x.index_select(-1, self.cols), self.tensors[0])
        i = 0
        if self._qb is not None:  # x Y^T Qb^T
            output = output + nn.functional.linear(
                nn.functional.linear(x, self.tensors[0]), self._qb
            )
            i = 1
        if self._qa_t is not None:  # x Qa Z^T
            output = output + nn.functional.linear(
                nn.functional.linear(x, self._qa_t), self.tensors[i]
            )
        if self._rows is not None:  # ((x U^T) * (M c)) (I - Qb Qb^T)
            u, mat = self._rows
            t = nn.functional.linear(x, u) * (mat @ self.tensors[-1])
            if self._qb is not None:
                t = t - (t @ self._qb) @ self._qb.T
            output = output + t
        return output

    def to_coordinates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """u with J u = P_T X for X (p x n x m), float64."""
        if self.cols is not None:
            return [x[..., self.cols]]
        out = []
        if self.qb is not None:
            out.append(self.qb.T @ x)  # Y = Qb^T X
        if self.qa is not None:
            rest = x - self.qb @ (self.qb.T @ x) if self.qb is not None else x
            out.append(rest @ self.qa)  # Z = (I - Qb Qb^T) X Qa
        if self.layer.rows is not None:
            out.append(self.layer.row_coordinates(x))  # c
        return out

    def from_coordinates(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """P_T h (p x n x m) from J^T h = (Qb^T h, h Qa) (or h[..., cols])."""
        if self.cols is not None:
            z = parts[0]
            out = torch.zeros(*z.shape[:-1], self.layer.m, dtype=torch.float64)
            out[..., self.cols] = z
            return out
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
        if self.layer.rows is not None:
            term = self.layer.row_directions(parts[-1])
            out = term if out is None else out + term
        return out
