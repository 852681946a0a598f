"""Directions for loss-landscape slices: filter-normalised Gaussian, PCA of a trajectory,
and the straight path from the base model.

A direction is a dict ``name -> tensor`` over the parameters it moves (names as in
``model.named_parameters()``). Spaces:

* ``"adapter"`` (default): the objective's trainable parameters (the adapter factors and
  anything else trained, e.g. a head).
* ``"full"``: every parameter of the model.
* ``"merged"``: the base weight of every adapted layer (perturbing it by D moves the
  merged weight W0 + dW by D, whatever the factorisation), plus other trainable
  parameters that are not adapter factors. Only for additive adapter layers (those that
  compute base(x) + update(x)); a DoRA layer, whose weight is a normalised W0 + s B A, is
  refused.

Filter normalisation (Li et al. 2018): each row of a direction (the slice along the
output dimension) is scaled to the norm of the same row of the weight; 1-D tensors
(biases, norms) are zeroed. In adapter space a LoRA B that is still zero has rows of norm
zero, so its direction is zero there: use ``space="merged"``, where rows are those of the
merged weight W0 + dW.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genbound.curvature.operator import AdaptedModule, find_adapted
from genbound.errors import GenboundError

SPACES = ("adapter", "full", "merged")

Direction = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Directions:
    """One or two directions and how they were made.

    Attributes:
        vectors: the directions (1 or 2 dicts name -> tensor).
        kind: ``"random-filter"``, ``"pca"``, ``"path"`` or ``"given"``.
        space: ``"adapter"``, ``"full"`` or ``"merged"``.
        seed: the seed of random directions (-1 otherwise).
        path: (snapshots x 2) least-squares coordinates of a trajectory (PCA), or None.
        explained: fraction of the trajectory's variance along each PCA direction.
        notes: how special cases were handled.
    """

    vectors: tuple[Direction, ...]
    kind: str
    space: str
    seed: int = -1
    path: np.ndarray | None = None
    explained: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()


def space_tensors(objective, space: str) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """The parameters a space moves (name -> parameter) and, per name, whether the row
    dimension is dim 1 (a transposed Conv1D base weight in merged space)."""
    model: nn.Module = objective.model
    params = dict(model.named_parameters())
    if space == "full":
        return params, dict.fromkeys(params, False)
    if space == "adapter":
        if not objective.trainable:
            raise GenboundError(
                "The objective names no trainable parameters, so the adapter space is "
                "empty; expected objective.trainable, or use space='full'."
            )
        sel = {n: params[n] for n in params if n in set(objective.trainable)}
        return sel, dict.fromkeys(sel, False)
    if space == "merged":
        layers = merged_layers(objective)
        out, transposed, factors = {}, {}, set()
        ids = {id(p): n for n, p in params.items()}
        for layer in layers:
            factors.update(layer.factor_names.values())
            w = layer.base.weight
            name = ids[id(w)]
            out[name] = w
            transposed[name] = tuple(w.shape) == (layer.m, layer.n) and layer.m != layer.n
        for n in objective.trainable:
            if n not in factors and n in params:
                out[n], transposed[n] = params[n], False
        return out, transposed
    raise GenboundError(f"Unknown space {space!r}; expected one of {', '.join(SPACES)}.")


def merged_layers(objective) -> list[AdaptedModule]:
    """The adapted layers whose base weights the merged space moves (an error when there
    are none, or when one is not additive)."""
    layers, _ = find_adapted(objective.model, objective.trainable)
    if not layers:
        raise GenboundError(
            "space='merged' needs adapted layers with known factors (PEFT LoRA, genbound "
            "adapter layers) among the trainable parameters; none found."
        )
    other = [f"{x.name} ({x.kind})" for x in layers if not x.view.additive]
    if other:
        raise GenboundError(
            "space='merged' moves the base weight of each adapted layer, which moves the "
            "merged weight by the same amount only for layers computing base(x) + update(x); "
            f"found {', '.join(other[:3])}. Use space='adapter'."
        )
    return layers


def merged_reference(objective, name: str, weight: torch.Tensor) -> torch.Tensor:
    """W0 + dW (stored orientation) for the base weight ``name`` of an adapted layer."""
    layers, _ = find_adapted(objective.model, objective.trainable)
    for layer in layers:
        if layer.base.weight is weight:
            d = layer.delta()
            return weight.detach().double() + (d if d.shape == weight.shape else d.T)
    return weight.detach().double()


def filter_normalize(d: torch.Tensor, w: torch.Tensor, rows_dim1: bool = False) -> torch.Tensor:
    """Scale each row of d to the norm of the same row of w; zero for 1-D tensors."""
    if d.ndim <= 1:
        return torch.zeros_like(d)
    dd, ww = (d.transpose(0, 1), w.transpose(0, 1)) if rows_dim1 else (d, w)
    dn = torch.linalg.vector_norm(dd.reshape(dd.shape[0], -1).double(), dim=1)
    wn = torch.linalg.vector_norm(ww.reshape(ww.shape[0], -1).double(), dim=1)
    scale = torch.where(dn > 0, wn / dn.clamp_min(1e-300), torch.zeros_like(dn))
    out = dd * scale.reshape(-1, *([1] * (dd.ndim - 1))).to(dd.dtype)
    return out.transpose(0, 1).contiguous() if rows_dim1 else out


def random_directions(
    objective, *, space: str = "adapter", seed: int = 0, count: int = 2
) -> Directions:
    """``count`` Gaussian directions, filter-normalised (Li et al. 2018); private RNG."""
    tensors, rows1 = space_tensors(objective, space)
    gen = torch.Generator().manual_seed(int(seed))
    vectors = []
    zero_rows = []
    for _ in range(count):
        d = {}
        for name, p in tensors.items():
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            ref = (
                merged_reference(objective, name, p)
                if space == "merged" and name not in objective.trainable
                else p.detach().double()
            )
            d[name] = filter_normalize(g, ref, rows1[name]).to(p.dtype)
            if p.ndim > 1 and float(ref.abs().max()) == 0.0:
                zero_rows.append(name)
        vectors.append(d)
    notes = ["1-D tensors (biases, norms) zeroed"]
    if zero_rows:
        notes.append(
            "zero weights give zero filter-normalised directions: "
            + ", ".join(sorted(set(zero_rows))[:4])
            + (" (use space='merged')" if space == "adapter" else "")
        )
    return Directions(tuple(vectors), "random-filter", space, seed=int(seed), notes=tuple(notes))


def path_direction(
    objective, base: dict[str, torch.Tensor] | None = None, *, space: str = "adapter"
) -> Directions:
    """d = theta_checkpoint - theta_base, the straight path from the base model.

    ``base`` gives the base values of parameters (missing names: no movement). Without it
    the base is dW = 0: in adapter space the factor each layer starts from zero (its
    ``origin``: LoRA's B, genbound layers and PEFT; VeRA's b) is zero at the base and the
    others unchanged, so d = B on B and 0 on A; in merged space d = dW on each adapted
    layer's base weight. Parameters that are not factors (a head) do not move by default.
    """
    tensors, _ = space_tensors(objective, space)
    notes: list[str] = []
    d: Direction = {n: torch.zeros_like(p.detach()) for n, p in tensors.items()}
    if base is not None:
        for n, p in tensors.items():
            if n in base:
                d[n] = (p.detach() - base[n].to(p.dtype)).clone()
        notes.append("base given by the caller")
    else:
        layers, _ = find_adapted(objective.model, objective.trainable)
        params = dict(objective.model.named_parameters())
        for layer in layers:
            if space == "merged":
                name = next(n for n, p in params.items() if p is layer.base.weight)
                delta = layer.delta()
                d[name] = (delta if delta.shape == d[name].shape else delta.T).to(d[name].dtype)
            else:
                origin = layer.factor_names.get(layer.view.origin)
                if origin in d:
                    d[origin] = params[origin].detach().clone()
        notes.append("base is dW = 0 (B = 0, A unchanged); other parameters fixed")
    if all(float(v.abs().max()) == 0 for v in d.values()):
        raise GenboundError(
            "The straight path from the base model is zero in this space (the checkpoint "
            "equals its base, or no adapted layer with known factors was found); pass "
            "base= with the base parameter values."
        )
    return Directions((d,), "path", space, notes=tuple(notes))


def pca_directions(
    objective, snapshots: list[dict[str, torch.Tensor]], *, space: str = "adapter"
) -> Directions:
    """Top-2 principal directions of a trajectory (theta_i - theta_final) and the path's
    least-squares coordinates on them. ``snapshots`` hold the space's tensors by name
    (missing names: equal to the final value)."""
    if len(snapshots) < 2:
        raise GenboundError(
            f"PCA directions need at least 2 trajectory snapshots; found {len(snapshots)}."
        )
    tensors, _ = space_tensors(objective, space)
    names = list(tensors)
    final = torch.cat([tensors[n].detach().double().reshape(-1) for n in names])
    rows = []
    for snap in snapshots:
        rows.append(
            torch.cat(
                [
                    (
                        snap[n].double().reshape(-1)
                        if n in snap
                        else tensors[n].detach().double().reshape(-1)
                    )
                    for n in names
                ]
            )
            - final
        )
    M = torch.stack(rows)  # (s x D)
    _, s, vh = torch.linalg.svd(M, full_matrices=False)
    if s.numel() < 2 or float(s[1]) == 0.0:
        raise GenboundError(
            "The trajectory snapshots span fewer than 2 directions (identical or collinear "
            "points); expected snapshots taken at different training steps."
        )
    basis = vh[:2]  # (2 x D), orthonormal
    coords, *_ = torch.linalg.lstsq(basis.T, M.T)
    var = (s**2) / float((s**2).sum())
    vectors = []
    for i in range(2):
        d, start = {}, 0
        for n in names:
            k = tensors[n].numel()
            d[n] = basis[i, start : start + k].reshape(tensors[n].shape).to(tensors[n].dtype)
            start += k
        vectors.append(d)
    return Directions(
        tuple(vectors),
        "pca",
        space,
        path=coords.T.numpy(),
        explained=(float(var[0]), float(var[1])),
        notes=("unit directions; coordinates in parameter-space distance",),
    )
