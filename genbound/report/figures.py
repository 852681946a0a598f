"""Figures of one report: update spectra, intruder counts, the Hessian's density (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genbound.spectra import SpectraResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectra(spectra: SpectraResult, path: str | Path, max_layers: int = 40) -> Path:
    """Singular values of each dW (descending, log scale), one line per update."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x in spectra.layers[:max_layers]:
        sv = np.asarray(x.singular_values, dtype=float)
        sv = sv[sv > 0]
        if sv.size:
            ax.plot(np.arange(1, sv.size + 1), sv, marker=".", lw=1, label=x.name)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value sigma_i of dW")
    ax.set_title("Weight-update singular spectra")
    if len(spectra.layers) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_intruders(spectra: SpectraResult, path: str | Path) -> Path | None:
    """Intruder dimensions among the top k of W0 + dW against eps, one line per update."""
    layers = [x for x in spectra.layers if x.intruders is not None]
    if not layers:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for x in layers:
        ax.plot(x.intruders.eps, x.intruders.counts, marker=".", lw=1, label=x.name)
    ax.set_xlabel("eps (largest |cosine| with W0's singular vectors below eps)")
    ax.set_ylabel(f"intruders among top {layers[0].intruders.k}")
    ax.set_title("Intruder dimensions")
    if len(layers) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_density(curvature, path: str | Path) -> Path:
    """The SLQ spectral density of the Hessian (log scale), with the top eigenvalue marked."""
    plt = _pyplot()
    d = curvature.density
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.semilogy(d.grid, np.maximum(d.density, 1e-12))
    ax.axvline(float(curvature.top.eigenvalues[0]), color="red", lw=0.8, label="top eigenvalue")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density (SLQ, {curvature.examples} examples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
