"""Write a report folder atomically: a temporary folder filled, then renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import genbound
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError
from genbound.io import atomic_directory
from genbound.report.measures import DataFreeMeasures
from genbound.report.serialize import jsonable
from genbound.spectra import LayerSpectrum

SCHEMA = "genbound.report/1"


def checkpoint_info(ckpt: Checkpoint) -> dict:
    """The checkpoint-level facts every report starts with."""
    hp = ckpt.hparams
    return {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "variant": ckpt.variant,
        "adapter_name": ckpt.adapter_name,
        "hparams": jsonable(
            {
                "rank": hp.rank,
                "alpha": hp.alpha,
                "scale": hp.scale,
                "rslora": hp.rslora,
                "chain": hp.chain,
                "selector_seed": hp.selector_seed,
                "targets": list(hp.targets),
                **hp.extra,
            }
        ),
        "dtype": str(ckpt.dtype).removeprefix("torch."),
        "bits_per_param": ckpt.bits_per_param,
        "n_train": ckpt.n_train,
        "base_model": str(ckpt.base.path) if ckpt.base is not None else None,
        "num_trainable": ckpt.num_trainable,
        "num_trainable_by_formula": ckpt.num_trainable_by_formula(),
        "metrics": jsonable({k: v for k, v in ckpt.metrics.items() if not k.endswith("_history")}),
        "notes": list(ckpt.notes),
    }


def layer_json(ckpt: Checkpoint, layer: LayerSpectrum) -> dict:
    """One update's entry: structure, trainable count and every spectral measure."""
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


def bounds_markdown(measures: DataFreeMeasures) -> list[str]:
    lines = ["", "## Bounds (data-free)", ""]
    mi = measures.mi
    if mi is not None:
        verdict = "vacuous" if mi.vacuous else "non-vacuous"
        lines += [
            f"- MI bound on the expected 0-1 gap: {mi.bound:.4g} ({verdict}; D = {mi.d_actual:,} trained scalars, "
            f"q = {mi.q:g} bits, N = {mi.n_train:,}); Occam form at delta = {mi.delta:g}: {mi.occam_bound:.4g}.",
        ]
        if mi.d_difference:
            lines.append(
                f"- D from the {mi.variant} formula: {mi.d_formula:,} ({mi.difference_note})."
            )
    if measures.theorem1 is not None:
        t = measures.theorem1
        lines.append(
            f"- Theorem 1 (corrected): log10 Phi_dW = {t.log10_phi_dW:.4g}, log10 Phi_W0 = {t.log10_phi_W0:.4g} "
            "(only the ordering across methods on one model means anything for transformers)."
        )
    for part, why in measures.skipped.items():
        lines.append(f"- {part}: not computed: {why}")
    return lines


def render_markdown(info: dict, measures: DataFreeMeasures) -> str:
    spectra = measures.spectra
    lines = [
        f"# genbound report: {info['variant']} ({info['format']})",
        "",
        f"- checkpoint: `{info['path']}`",
        f"- base model: `{info['base_model']}`",
        f"- trainable parameters: {info['num_trainable']:,} from the tensors, "
        f"{info['num_trainable_by_formula']:,} from the {info['variant']} formula",
        f"- stored dtype: {info['dtype']} ({info['bits_per_param']} bits per parameter)",
        f"- training examples: {info['n_train'] if info['n_train'] is not None else 'unknown'}",
        "",
        "## Spectra",
        "",
        "| module | kind | shape | ‖dW‖₂ | ‖dW‖_F | stable rank | eff. rank | ‖dW‖₂/‖W0‖₂ | intruders (eps 0.5) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in spectra.layers:
        rel = f"{x.relative_spectral:.3g}" if x.relative_spectral is not None else "n/a"
        intr = (
            f"{x.intruders.count_at(0.5)} / {x.intruders.k}"
            if x.intruders is not None and 0.5 in x.intruders.eps
            else "n/a"
        )
        shape = " x ".join(map(str, x.shape))
        lines.append(
            f"| `{x.name}` | {x.kind} | {shape} | {x.spectral_norm:.4g} | {x.frobenius_norm:.4g} | "
            f"{x.stable_rank:.3g} | {x.effective_rank:.3g} | {rel} | {intr} |"
        )
    if spectra.skipped:
        lines += [
            "",
            "Not matrices (no spectrum): " + ", ".join(f"`{n}`" for n, _ in spectra.skipped),
        ]
    lines += bounds_markdown(measures)
    return "\n".join(lines) + "\n"


def ensure_writable(out_dir: str | Path, *, force: bool) -> Path:
    """Refuse (before any work) to replace an existing report unless ``force``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise GenboundError(f"{out}: a report already exists there; pass --force to replace it.")
    return out


def write_report(
    ckpt: Checkpoint, out_dir: str | Path, measures: DataFreeMeasures, *, force: bool = False
) -> Path:
    """Write ``report.json`` and ``report.md`` for ``ckpt`` with its computed ``measures``.

    The folder appears whole or not at all; an existing report is replaced only with
    ``force=True``.
    """
    out = ensure_writable(out_dir, force=force)
    info = checkpoint_info(ckpt)
    spectra = measures.spectra
    doc = {
        "schema": SCHEMA,
        "genbound_version": genbound.__version__,
        "checkpoint": info,
        "updates": [layer_json(ckpt, x) for x in spectra.layers],
        "skipped_updates": [{"name": n, "why": why} for n, why in spectra.skipped],
        "spectra_settings": {
            "k": spectra.k,
            "eps": list(spectra.eps),
            "cache_hits": spectra.cache_hits,
            "cache_misses": spectra.cache_misses,
        },
        "bounds": {
            "mi": jsonable(measures.mi) if measures.mi is not None else None,
            "theorem1": jsonable(measures.theorem1) if measures.theorem1 is not None else None,
        },
        "skipped": dict(measures.skipped),
        "timings_s": dict(measures.seconds),
    }
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(info, measures))
    return out
