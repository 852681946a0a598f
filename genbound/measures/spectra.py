"""``spectra``: per-layer singular spectra of dW, norms, ranks and intruder dimensions.

Data-free. ``report.json``: ``updates`` (one entry per matrix update), ``skipped_updates``
and ``spectra_settings``; figures ``spectra.png`` and ``intruders.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import mean_updates, sum_updates
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.spectra import LayerSpectrum, SpectraResult


def layer_json(ckpt: Checkpoint, layer: LayerSpectrum) -> dict:
    """One update's entry: structure, trainable count and every spectral measure."""
    from genbound.report.serialize import jsonable

    u = ckpt.updates[layer.name]
    out = {
        "name": layer.name,
        "kind": layer.kind,
        "shape": list(layer.shape),
        "rank": u.rank,
        "trainable": u.num_trainable,
    }
    out.update(jsonable(layer, skip=frozenset({"name", "kind", "shape", "top", "U"})))
    if layer.top is not None:
        out["top"] = {
            "method": layer.top.method,
            "converged": layer.top.converged,
            "steps": layer.top.steps,
            "max_residual": float(layer.top.residuals.max(initial=0.0)),
            "tol": layer.top.tol,
        }
    return out


def intruder_sentence(layers: list[LayerSpectrum], eps: float = 0.5) -> str:
    """What the intruder counts at ``eps`` say: how many of ``layers`` (each with intruders
    measured at ``eps``) gained directions W0 does not have. Layers trained in full (dense
    updates) are "updated layers", adapter layers "adapted layers"."""
    noun = "updated" if all(x.kind == "dense" for x in layers) else "adapted"
    n = sum(x.intruders.count_at(eps) > 0 for x in layers)
    k = layers[0].intruders.k
    what = (
        f"top-{k} singular vectors of W0 + dW unlike any of W0's (largest |cosine| below {eps:g})"
    )
    if n == 0:
        none = (
            f"The {noun} layer has no"
            if len(layers) == 1
            else f"None of the {len(layers)} {noun} layers has"
        )
        return (
            f"{none} intruder dimensions ({what}): every leading direction of the fine-tuned "
            "weight is close to one W0 already had, so the update re-weights existing "
            "directions rather than adding new ones."
        )
    if n == len(layers):
        every = "The" if n == 1 else f"All {n}"
        return (
            f"{every} {noun} layer{'s' if n > 1 else ''} {'has' if n == 1 else 'have'} "
            f"intruder dimensions ({what}): the update added directions W0 does not have."
        )
    return (
        f"{n} of {len(layers)} {noun} layers {'has' if n == 1 else 'have'} intruder "
        f"dimensions ({what}): in {'that layer' if n == 1 else 'those layers'} the update "
        "added directions W0 does not have; in the others it re-weights existing ones."
    )


class Spectra(Measure):
    name = "spectra"
    description = "per-layer spectra of dW and intruder dimensions"
    section = "spectra"
    shown = False  # a per-layer progress bar shows it
    scalars: ClassVar[dict[str, Scalar]] = {
        "sum_dW_frobenius": Scalar(
            lambda d: sum_updates(d, "frobenius_norm"), "sum of ||dW||_F over updates"
        ),
        "sum_dW_spectral": Scalar(lambda d: sum_updates(d, "spectral_norm"), "sum of ||dW||_2"),
        "mean_effective_rank": Scalar(
            lambda d: mean_updates(d, "effective_rank"), "mean effective rank of dW"
        ),
        "mean_relative_spectral": Scalar(
            lambda d: mean_updates(d, "relative_spectral"), "mean ||dW||_2 / ||W0||_2"
        ),
    }

    def compute(self, ctx) -> SpectraResult:
        from genbound.spectra import analyze_spectra

        return analyze_spectra(ctx.checkpoint, progress=ctx.progress, base_svd=ctx.options.base_svd)

    def json(self, result: SpectraResult | None, ckpt: Checkpoint) -> dict:
        if result is None:
            return {("updates",): [], ("skipped_updates",): [], ("spectra_settings",): None}
        return {
            ("updates",): [layer_json(ckpt, x) for x in result.layers],
            ("skipped_updates",): [{"name": n, "why": why} for n, why in result.skipped],
            ("spectra_settings",): {
                "k": result.k,
                "eps": list(result.eps),
                "cache_hits": result.cache_hits,
                "cache_misses": result.cache_misses,
            },
        }

    def markdown(self, result: SpectraResult, measures) -> list[str]:
        lines = [
            "",
            "## Spectra",
            "",
            "| module | kind | shape | ‖dW‖₂ | ‖dW‖_F | stable rank | eff. rank | ‖dW‖₂/‖W0‖₂ | intruders (eps 0.5) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in result.layers:
            rel = f"{x.relative_spectral:.3g}" if x.relative_spectral is not None else "n/a"
            intr = (
                f"{x.intruders.count_at(0.5)} / {x.intruders.k}"
                if x.intruders is not None and 0.5 in x.intruders.eps
                else "n/a"
            )
            shape = " x ".join(map(str, x.shape))
            lines.append(
                f"| `{x.name}` | {x.kind} | {shape} | {x.spectral_norm:.4g} | "
                f"{x.frobenius_norm:.4g} | {x.stable_rank:.3g} | {x.effective_rank:.3g} | "
                f"{rel} | {intr} |"
            )
        if result.skipped:
            lines += [
                "",
                "Not matrices (no spectrum): " + ", ".join(f"`{n}`" for n, _ in result.skipped),
            ]
        if result.layers:
            lines += ["", "![singular spectra](figures/spectra.png)"]
            if any(x.intruders is not None for x in result.layers):
                lines += ["", "![intruder dimensions](figures/intruders.png)"]
        return lines

    def reading(self, result: SpectraResult, measures) -> list[str]:
        with_intr = [x for x in result.layers if x.intruders is not None and 0.5 in x.intruders.eps]
        return [intruder_sentence(with_intr)] if with_intr else []

    def write_files(self, result: SpectraResult, folder: Path) -> None:
        from genbound.report.figures import plot_intruders, plot_spectra

        if result.layers:
            plot_spectra(result, folder / "figures" / "spectra.png")
            plot_intruders(result, folder / "figures" / "intruders.png")

    def log_values(self, result: SpectraResult, *, per_layer: bool, intruder_eps: float) -> dict:
        out: dict[str, float] = {}
        layers = result.layers
        if not layers:
            return out
        norms = [x.spectral_norm for x in layers]
        out["dW_spectral_norm/max"] = max(norms)
        out["dW_spectral_norm/mean"] = float(np.mean(norms))
        out["effective_rank/mean"] = float(np.mean([x.effective_rank for x in layers]))
        counted = [x for x in layers if x.intruders is not None]
        if counted:
            out["intruders"] = sum(x.intruders.count_at(intruder_eps) for x in counted)
        if per_layer:
            for x in layers:
                out[f"dW_spectral_norm/{x.name}"] = x.spectral_norm
                out[f"effective_rank/{x.name}"] = x.effective_rank
                if x.intruders is not None:
                    out[f"intruders/{x.name}"] = x.intruders.count_at(intruder_eps)
        return out


register_measure(Spectra())
