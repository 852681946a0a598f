"""Loss-landscape slices L(theta + x d1 + y d2) and the numbers read off them.

Evaluation perturbs the parameters in place under ``torch.no_grad`` (each point is set
from a saved copy of theta, never by accumulating steps) inside
:func:`~genbound.curvature.context.analysis_mode` (eval mode), and restores the saved
tensors bit-exactly at the end, also on errors. The objective's cached activations below
the first adapted layer are reused as they are: only what the objective evaluates runs.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genbound.curvature.context import analysis_mode
from genbound.curvature.operator import find_adapted
from genbound.errors import GenboundError
from genbound.jsonio import dumps_json
from genbound.landscape.directions import (
    Direction,
    Directions,
    path_direction,
    pca_directions,
    random_directions,
)


def evaluate_plane(
    objective,
    d1: Direction,
    d2: Direction | None,
    xs: Sequence[float],
    ys: Sequence[float] | None = None,
) -> np.ndarray:
    """Mean loss at theta + x d1 + y d2 for x in xs, y in ys: array (len(xs), len(ys)),
    or (len(xs),) without d2. Parameters are restored bit-exactly afterwards."""
    model = objective.model
    params = dict(model.named_parameters())
    names = sorted(set(d1) | set(d2 or {}), key=list(params).index)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise GenboundError(
            f"A direction names parameters the model does not have ({', '.join(unknown[:3])}); "
            f"expected names as in model.named_parameters()."
        )
    saved = {n: params[n].detach().clone() for n in names}
    zero = {n: None for n in names}
    a = {n: d1.get(n, zero[n]) for n in names}
    b = {n: (d2 or {}).get(n, zero[n]) for n in names}
    ys_list = [0.0] if ys is None else list(ys)
    out = np.empty((len(xs), len(ys_list)))
    with analysis_mode(model):
        try:
            with torch.no_grad():
                for i, x in enumerate(xs):
                    for j, y in enumerate(ys_list):
                        for n in names:
                            p, t0 = params[n], saved[n]
                            if a[n] is not None:
                                torch.add(t0, a[n].to(p.dtype), alpha=float(x), out=p.data)
                            else:
                                p.data.copy_(t0)
                            if b[n] is not None and y != 0.0:
                                p.data.add_(b[n].to(p.dtype), alpha=float(y))
                        out[i, j] = objective.mean_loss()
        finally:
            with torch.no_grad():
                for n in names:
                    params[n].data.copy_(saved[n])
    return out[:, 0] if ys is None else out


@dataclass(frozen=True)
class Landscape:
    """A 1-D or 2-D loss slice and its summary numbers.

    Attributes:
        xs, ys: grid coordinates (ys None for 1-D); 0 is the checkpoint.
        losses: (len(xs),) or (len(xs), len(ys)) mean losses.
        centre_loss: loss at the checkpoint (x = y = 0).
        curvature: per axis, 2 c of a quadratic a + b t + c t^2 fitted to the
            ``fit_points`` grid points nearest the centre along that axis.
        flat_fraction: fraction of grid points with |L - L(0)| <= tol.
        tol: that tolerance.
        ascent: mean of L - L(0) at radius rho (linear / bilinear interpolation on
            2 points (1-D) or 64 angles (2-D)).
        rho: that radius (in grid coordinates).
        kind: direction kind (``"random-filter"``, ``"pca"``, ``"path"``, ``"given"``).
        space: ``"adapter"``, ``"full"`` or ``"merged"``.
        path: trajectory coordinates (PCA) or None.
        metadata: seed, description, notes, path parameterisation, ...
    """

    xs: np.ndarray
    ys: np.ndarray | None
    losses: np.ndarray
    centre_loss: float
    curvature: tuple[float, ...]
    flat_fraction: float
    tol: float
    ascent: float
    rho: float
    kind: str
    space: str
    path: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def save_npz(self, path: str | Path) -> Path:
        """Save the grid, the numbers and the metadata (as JSON, non-finite numbers as the
        strings ``"inf"``, ``"-inf"``, ``"nan"``) to ``path`` (.npz)."""
        path = Path(path)
        meta = {
            "centre_loss": self.centre_loss,
            "curvature": list(self.curvature),
            "flat_fraction": self.flat_fraction,
            "tol": self.tol,
            "ascent": self.ascent,
            "rho": self.rho,
            "kind": self.kind,
            "space": self.space,
            **self.metadata,
        }
        arrays = {"xs": self.xs, "losses": self.losses, "metadata": np.array(dumps_json(meta))}
        if self.ys is not None:
            arrays["ys"] = self.ys
        if self.path is not None:
            arrays["path"] = self.path
        np.savez(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    def describe(self) -> str:
        """What the slice moves, in words (the figure's title)."""
        moves = self.metadata.get("moves") or f"the {self.space} space"
        if self.kind == "path":
            return (
                "Loss along the path W0 + t dW from the base model (t = 0) to the checkpoint "
                f"(t = 1); moves {moves}"
            )
        one = self.ys is None
        what = {
            "random-filter": "a random filter-normalised direction"
            if one
            else "two random filter-normalised directions",
            "pca": "the trajectory's top two principal directions",
        }.get(self.kind, "the given direction" if one else "the given directions")
        return f"Loss along {what} in the space of {moves}"

    def plot(self, path: str | Path) -> Path:
        """Plot the slice (1-D: a line; 2-D: contour and surface side by side) to ``path``
        (PNG, drawn without pyplot: the session's plotting backend is left as it is)."""
        from genbound.plotting import new_figure, readable_axis, save_figure

        path = Path(path)
        if self.ys is None:
            fig = new_figure(5.6, 3.8)
            ax = fig.add_subplot()
            ax.plot(self.xs, self.losses, marker=".")
            ax.axvline(0.0, color="grey", lw=0.5)
            top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
            ax.text(0.0, 0.98, " checkpoint", transform=top, fontsize=7, va="top")
            if self.kind == "path":
                ax.axvline(-1.0, color="grey", lw=0.5, ls="--")
                ax.text(-1.0, 0.98, " base model", transform=top, fontsize=7, va="top")
                ax.set_xlabel("x  (t = 1 + x: x = -1 base model, x = 0 checkpoint)")
            else:
                ax.set_xlabel("x  (multiples of the direction; x = 0 checkpoint)")
            ax.set_ylabel("mean training loss")
            readable_axis(ax, [], "x", max_ticks=6)
            readable_axis(ax, [], "y", max_ticks=6)
        else:
            fig = new_figure(10, 4.4)
            ax = fig.add_subplot(1, 2, 1)
            X, Y = np.meshgrid(self.xs, self.ys, indexing="ij")
            cs = ax.contour(X, Y, self.losses, levels=12)
            ax.clabel(cs, fontsize=6, fmt="%.4g")
            ax.plot([0], [0], "k+")
            if self.path is not None:
                ax.plot(self.path[:, 0], self.path[:, 1], "r.-", lw=0.8)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
            readable_axis(ax, [], "x")
            readable_axis(ax, [], "y")
            ax3 = fig.add_subplot(1, 2, 2, projection="3d")
            ax3.plot_surface(X, Y, self.losses, cmap="viridis", linewidth=0)
            ax3.set_xlabel("x")
            ax3.set_ylabel("y")
            ax3.set_zlabel("loss")
            for axis in (ax3.xaxis, ax3.yaxis, ax3.zaxis):
                axis.get_major_locator().set_params(nbins=4)
        fig.suptitle(textwrap.fill(self.describe(), 70), fontsize=10)
        return save_figure(fig, path, dpi=120)


def _axis_curvature(t: np.ndarray, vals: np.ndarray, fit_points: int) -> float:
    order = np.argsort(np.abs(t))[: max(3, fit_points)]
    c = np.polyfit(t[order], vals[order], 2)
    return float(2 * c[0])


def _summaries(xs, ys, losses, tol, rho, fit_points):
    i0 = int(np.argmin(np.abs(xs)))
    if ys is None:
        centre = float(losses[i0])
        curv = (_axis_curvature(xs, losses, fit_points),)
        ring = [np.interp(r, xs, losses) for r in (-rho, rho) if xs[0] <= r <= xs[-1]]
    else:
        j0 = int(np.argmin(np.abs(ys)))
        centre = float(losses[i0, j0])
        curv = (
            _axis_curvature(xs, losses[:, j0], fit_points),
            _axis_curvature(ys, losses[i0, :], fit_points),
        )
        ring = []
        for th in np.linspace(0, 2 * math.pi, 64, endpoint=False):
            px, py = rho * math.cos(th), rho * math.sin(th)
            if xs[0] <= px <= xs[-1] and ys[0] <= py <= ys[-1]:
                ring.append(_bilinear(xs, ys, losses, px, py))
    flat = float(np.mean(np.abs(losses - centre) <= tol))
    ascent = float(np.mean(ring) - centre) if ring else float("nan")
    return centre, curv, flat, ascent


def _bilinear(xs, ys, z, px, py) -> float:
    i = int(np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2))
    j = int(np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2))
    tx = (px - xs[i]) / (xs[i + 1] - xs[i])
    ty = (py - ys[j]) / (ys[j + 1] - ys[j])
    return float(
        (1 - tx) * (1 - ty) * z[i, j]
        + tx * (1 - ty) * z[i + 1, j]
        + (1 - tx) * ty * z[i, j + 1]
        + tx * ty * z[i + 1, j + 1]
    )


def _grid(steps: int, lo: float, hi: float) -> np.ndarray:
    if steps < 3 or steps % 2 == 0:
        raise GenboundError(
            f"Landscape grids must have an odd number of points (>= 3) so that the "
            f"checkpoint is evaluated; found steps={steps}."
        )
    g = np.linspace(lo, hi, steps)
    i = int(np.argmin(np.abs(g)))
    if abs(g[i]) <= 1e-9 * (hi - lo):
        g[i] = 0.0
    return g


def _directions(objective, directions, kind, space, seed, snapshots, base, count) -> Directions:
    if directions is not None:
        if isinstance(directions, Directions):
            return directions
        vecs = (directions,) if isinstance(directions, dict) else tuple(directions)
        return Directions(vecs, "given", space)
    if kind in ("random", "random-filter"):
        return random_directions(objective, space=space, seed=seed, count=count)
    if kind == "pca":
        if snapshots is None:
            raise GenboundError("kind='pca' needs snapshots= (a list of trajectory tensors).")
        return pca_directions(objective, snapshots, space=space)
    if kind == "path":
        return path_direction(objective, base, space=space)
    raise GenboundError(f"Unknown direction kind {kind!r}; expected 'random', 'pca' or 'path'.")


def landscape_1d(
    objective,
    *,
    kind: str = "random",
    directions: Directions | Direction | None = None,
    space: str = "adapter",
    steps: int = 21,
    extent: float = 1.0,
    coords: Sequence[float] | None = None,
    seed: int = 0,
    base: dict[str, torch.Tensor] | None = None,
    tol: float = 0.01,
    rho: float | None = None,
    fit_points: int = 5,
) -> Landscape:
    """L(theta + x d) on an odd grid from -extent to extent (``"path"``: x from -1.5 to 0.5,
    i.e. t = 1 + x from -0.5 to 1.5 along base -> checkpoint, t = 0 the base model)."""
    dirs = _directions(objective, directions, kind, space, seed, None, base, 1)
    if coords is not None:
        xs = np.asarray(coords, dtype=float)
    elif dirs.kind == "path":
        if (steps - 1) % 4:
            raise GenboundError(
                f"A path landscape spans x in [-1.5, 0.5] and must hit the base (x = -1) and the "
                f"checkpoint (x = 0): steps must be 4 k + 1 (e.g. 21); found {steps}."
            )
        xs = _grid(steps, -1.5, 0.5)
    else:
        xs = _grid(steps, -extent, extent)
    if not np.any(xs == 0.0):
        raise GenboundError("The landscape grid must contain the checkpoint (coordinate 0).")
    losses = evaluate_plane(objective, dirs.vectors[0], None, xs)
    rho = float(rho) if rho is not None else 0.5 * float(np.max(np.abs(xs)))
    return _landscape(objective, dirs, xs, None, losses, tol, rho, fit_points, path=None)


def landscape_2d(
    objective,
    *,
    kind: str = "random",
    directions: Directions | Sequence[Direction] | None = None,
    space: str = "adapter",
    steps: int = 21,
    extent: float = 1.0,
    seed: int = 0,
    snapshots: list[dict[str, torch.Tensor]] | None = None,
    tol: float = 0.01,
    rho: float | None = None,
    fit_points: int = 5,
) -> Landscape:
    """L(theta + x d1 + y d2) on an odd steps x steps grid centred on the checkpoint.

    ``kind``: ``"random"`` (filter-normalised Gaussian, grid +-extent) or ``"pca"``
    (``snapshots`` of the trajectory; the grid covers the projected path with a 20 %
    margin); or pass ``directions`` (two dicts or a :class:`Directions`).
    """
    dirs = _directions(objective, directions, kind, space, seed, snapshots, None, 2)
    if len(dirs.vectors) != 2:
        raise GenboundError(f"A 2-D slice needs two directions; found {len(dirs.vectors)}.")
    if dirs.path is not None:
        ext_x = 1.2 * max(float(np.max(np.abs(dirs.path[:, 0]))), 1e-8)
        ext_y = 1.2 * max(float(np.max(np.abs(dirs.path[:, 1]))), 1e-8)
    else:
        ext_x = ext_y = extent
    xs, ys = _grid(steps, -ext_x, ext_x), _grid(steps, -ext_y, ext_y)
    losses = evaluate_plane(objective, dirs.vectors[0], dirs.vectors[1], xs, ys)
    rho = float(rho) if rho is not None else 0.5 * min(ext_x, ext_y)
    return _landscape(objective, dirs, xs, ys, losses, tol, rho, fit_points, path=dirs.path)


def _moves(objective, dirs: Directions) -> str:
    """What the directions move, in words: the adapter's factors only when the objective's
    trained parameters include adapter factors (full fine-tuning and a head move their
    tensors themselves)."""
    if dirs.space == "full":
        return "every parameter of the model"
    if dirs.space == "merged":
        return "the merged weights W0 + dW"
    layers, _ = find_adapted(objective.model, objective.trainable)
    factors = {n for layer in layers for n in layer.factor_names.values()}
    moved = {n for d in dirs.vectors for n, t in d.items() if bool(t.any())}
    if moved & factors:
        return "the adapter's trained factors" + (
            " and the other trained tensors" if moved - factors else ""
        )
    return "the trained tensors, every entry of W0 + dW"


def _meta(objective, dirs: Directions) -> dict:
    return {
        "moves": _moves(objective, dirs),
        "seed": dirs.seed,
        "description": getattr(objective, "description", ""),
        "num_examples": objective.num_examples,
        "notes": list(dirs.notes),
        "explained": list(dirs.explained),
        "direction_norms": [
            float(math.sqrt(sum(float(t.double().pow(2).sum()) for t in d.values())))
            for d in dirs.vectors
        ],
        "path_parameter": "t = 1 + x (t = 0: base model, t = 1: checkpoint)"
        if dirs.kind == "path"
        else "",
    }


def _landscape(objective, dirs, xs, ys, losses, tol, rho, fit_points, *, path) -> Landscape:
    """The :class:`Landscape` of evaluated ``losses`` on the grid ``xs`` (x ``ys``), with its summaries."""
    centre, curv, flat, ascent = _summaries(xs, ys, losses, tol, rho, fit_points)
    return Landscape(
        xs=xs,
        ys=ys,
        losses=losses,
        centre_loss=centre,
        curvature=curv,
        flat_fraction=flat,
        tol=tol,
        ascent=ascent,
        rho=rho,
        kind=dirs.kind,
        space=dirs.space,
        path=path,
        metadata=_meta(objective, dirs),
    )
