"""Figures of one report: update spectra, intruder counts, the Hessian's density (PNG).

Drawn on :class:`matplotlib.figure.Figure` objects (see :mod:`genbound.plotting`), so
writing a report from a notebook leaves the notebook's plotting backend as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genbound.plotting import layer_and_module, line_styles, new_figure, save_figure
from genbound.spectra import SpectraResult

#: Above this many updates the spectra are drawn as one panel per module type.
LINES_PER_AXES = 20


def _spectrum(x) -> np.ndarray:
    sv = np.asarray(x.singular_values, dtype=float)
    return sv[sv > 0]


def plot_spectra(spectra: SpectraResult, path: str | Path) -> Path:
    """Singular values of each dW (descending, log scale), one line per update.

    Up to :data:`LINES_PER_AXES` updates share one axes, each line with its own colour and
    marker (one colour per module type, one marker per layer index,
    :func:`genbound.plotting.line_styles`) named in a legend. More updates are drawn as
    one panel per module type (query, key, ...), lines coloured by layer index on a
    colour bar, so a 12-layer model's 72 updates stay readable.
    """
    layers = [x for x in spectra.layers if _spectrum(x).size]
    parsed = [layer_and_module(x.name) for x in layers]
    modules = list(dict.fromkeys(m for _, m in parsed))
    indices = sorted({int(i) for i, _ in parsed if i is not None})
    if len(layers) <= LINES_PER_AXES or len(modules) > 12 or len(indices) < 2:
        return _spectra_one_axes(layers, path)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = min(3, len(modules))
    rows = -(-len(modules) // cols)
    fig = new_figure(4.0 * cols + 1.0, 3.0 * rows)
    norm = Normalize(min(indices), max(indices))
    cmap = colormaps["viridis"]
    axes = []
    for k, module in enumerate(modules):
        ax = fig.add_subplot(rows, cols, k + 1, sharey=axes[0] if axes else None)
        axes.append(ax)
        for x, (i, m) in zip(layers, parsed, strict=True):
            if m == module:
                sv = _spectrum(x)
                colour = cmap(norm(int(i))) if i is not None else "black"
                ax.plot(np.arange(1, sv.size + 1), sv, color=colour, lw=1, marker=".", ms=3)
        ax.set_yscale("log")
        ax.set_title(module, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("sigma_i of dW", fontsize=8)
        if k >= len(modules) - cols:
            ax.set_xlabel("index i", fontsize=8)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label="layer index", shrink=0.8)
    fig.suptitle(f"Weight-update singular spectra ({len(layers)} updates)")
    return save_figure(fig, path)


def _spectra_one_axes(layers: list, path: str | Path) -> Path:
    styles = line_styles([x.name for x in layers])
    ncol = 1 if len(layers) <= 18 else 2
    fig = new_figure(7.5 + 2.2 * ncol, 4.2)
    ax = fig.add_subplot()
    for x, style in zip(layers, styles, strict=True):
        sv = _spectrum(x)
        ax.plot(np.arange(1, sv.size + 1), sv, lw=1, markersize=4, **style)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value sigma_i of dW")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Weight-update singular spectra")
    if layers:
        fig.legend(loc="outside right upper", fontsize=7, ncol=ncol, title="layer  module")
    return save_figure(fig, path)


def plot_intruders(spectra: SpectraResult, path: str | Path) -> Path | None:
    """Intruder dimensions among the top k of W0 + dW: one row per update, one column per
    eps, each cell the count (written in the cell and coloured from 0 to k)."""
    layers = [x for x in spectra.layers if x.intruders is not None]
    if not layers:
        return None
    k = layers[0].intruders.k
    eps = np.asarray(layers[0].intruders.eps, dtype=float)
    counts = np.array([np.asarray(x.intruders.counts, dtype=float) for x in layers])
    labels = [s["label"] for s in line_styles([x.name for x in layers])]
    fig = new_figure(
        2.8 + 0.55 * len(eps), 1.4 + (0.24 if len(layers) <= 30 else 0.17) * len(layers)
    )
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(k, 1), aspect="auto")
    if len(layers) <= 60:
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, f"{c:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if c > 0.6 * k else "black")  # fmt: skip
    ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps])
    ax.set_yticks(range(len(layers)), labels, fontsize=7 if len(layers) <= 30 else 5)
    ax.set_xlabel("eps (largest |cosine| with any of W0's singular vectors below eps)")
    ax.set_title(f"Intruder dimensions among the top {k} singular vectors of W0 + dW")
    fig.colorbar(image, ax=ax, label="intruders", shrink=0.8)
    return save_figure(fig, path)


def plot_density(curvature, path: str | Path) -> Path:
    """The SLQ spectral density of the Hessian (log scale), with the top eigenvalue marked."""
    d = curvature.density
    fig = new_figure(7, 3.6)
    ax = fig.add_subplot()
    ax.semilogy(d.grid, np.maximum(d.density, 1e-12))
    ax.axvline(float(curvature.top.eigenvalues[0]), color="red", lw=0.8, label="top eigenvalue")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density (SLQ, {curvature.examples} examples)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
