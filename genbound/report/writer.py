"""Write a report folder atomically: a temporary folder filled, then renamed into place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import genbound
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError, input_error
from genbound.io import atomic_directory, save_tensors
from genbound.report.figures import plot_density, plot_intruders, plot_spectra
from genbound.report.html import markdown_to_html
from genbound.report.markdown import render_markdown
from genbound.report.measures import Measures
from genbound.report.serialize import dumps_json, jsonable
from genbound.spectra import LayerSpectrum

SCHEMA = "genbound.report/1"
QUANTIZED_FILE = "quantized.safetensors"


def checkpoint_info(ckpt: Checkpoint) -> dict:
    """The checkpoint-level facts every report starts with."""
    return {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "variant": ckpt.variant,
        "adapter_name": ckpt.adapter_name,
        "hparams": jsonable(ckpt.hparams.as_dict()),
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


def ensure_writable(out_dir: str | Path, *, force: bool) -> Path:
    """Check, before any work, that a report can be written to ``out_dir``: it is a folder
    or can be created as one, its nearest existing parent is a writable folder, and it holds
    no report unless ``force``."""
    out = Path(out_dir)
    check_output_folder(out, what="report folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise GenboundError(f"{out}: a report already exists there; pass --force to replace it.")
    return out


def check_output_folder(path: str | Path, *, what: str, replaced: bool = True) -> None:
    """A GenboundError unless ``path`` is a folder or can be created as one, and can be
    written: with ``replaced`` (a report, written as a sibling and renamed into place) the
    nearest existing ancestor of its parent must be a folder this process may write in;
    otherwise (a cache, written into) ``path`` itself or its nearest existing ancestor."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise input_error(
            path, f"cannot write the {what}", expected="a folder", found="a file", cls=GenboundError
        )
    parent = path.parent if replaced else path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise input_error(
            path,
            f"cannot write the {what}",
            expected="a path whose parents are folders",
            found=f"{parent} is a file",
            cls=GenboundError,
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise input_error(
            path,
            f"cannot write the {what}",
            expected="a folder this user may write in",
            found=f"{parent} is not writable",
            cls=GenboundError,
        )


def compression_json(measures: Measures) -> dict | None:
    """The compression bound with every input needed to check it by hand (the chosen
    candidate's quantized tensors are written next to the report)."""
    c = measures.compression
    if c is None:
        return None
    cands = []
    for cand in c.candidates:
        q = cand.quantization
        cands.append(
            {
                "bits": cand.bits,
                "code_bits": cand.code_bits,
                "rhs_nats": cand.rhs,
                "floor": cand.floor,
                "evaluated": cand.evaluated,
                "train_error": cand.train_error,
                "bound": cand.bound,
                "codebook_mode": q.mode,
                "codebook_float_bits": q.codebook_bits,
                "codebooks": [cb.tolist() for cb in q.codebooks],
                "parts": [
                    jsonable(p, skip=frozenset({"counts"})) | {"counts": p.counts.tolist()}
                    for p in cand.code.parts
                ],
            }
        )
    return {
        "bound": c.bound,
        "chosen_bits": c.chosen_bits,
        "code_bits": c.code_bits,
        "train_error": c.train_error,
        "rhs_nats": c.rhs,
        "n_train": c.n_train,
        "delta": c.delta,
        "num_candidates": c.num_candidates,
        "vacuous_at": c.vacuous_at,
        "vacuous": c.vacuous,
        "quantized_tensors": QUANTIZED_FILE,
        "code": c.chosen.code.description,
        "candidates": cands,
        "assumptions": list(c.assumptions),
        "warnings": list(c.warnings),
    }


def curvature_json(measures: Measures) -> dict | None:
    c = measures.curvature
    if c is None:
        return None
    return {
        "space": c.space,
        "examples": c.examples,
        "sample": jsonable(c.sample) if c.sample is not None else None,
        "top_eigenvalue": float(c.top.eigenvalues[0]),
        "top": jsonable(c.top, skip=frozenset({"vectors"})),
        "trace": jsonable(c.trace),
        "density": jsonable(c.density) | {"figure": "figures/hessian-density.png"},
    }


def landscapes_json(measures: Measures) -> dict:
    return {
        kind: jsonable(ls, skip=frozenset({"metadata"}))
        | {"file": f"landscape-{kind}.npz", "figure": f"figures/landscape-{kind}.png"}
        for kind, ls in measures.landscapes.items()
    }


def report_document(
    ckpt: Checkpoint,
    measures: Measures,
    *,
    content_key: str | None = None,
    settings_key: str | None = None,
    settings: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """Everything ``report.json`` holds (schema ``genbound.report/1``, docs/report-format.md).

    ``content_key`` identifies the checkpoint's content and ``settings_key`` the report's
    settings (a sweep reuses a report when both are equal); ``settings`` are the job's
    options, recorded over what the measures record of themselves (they agree where both
    give a value; the job adds ``device`` and ``n_train`` as given); ``provenance`` says
    who computed the report (genbound version, host, pid, executor, worker, start and end).
    """
    spectra = measures.spectra
    return {
        "schema": SCHEMA,
        "genbound_version": genbound.__version__,
        "settings_key": settings_key,
        "settings": jsonable({**measures.settings, **(settings or {})}),
        "checkpoint": checkpoint_info(ckpt) | {"content_key": content_key},
        "data": {
            "task": measures.task,
            "reference": measures.task_reference,
            "n_train": measures.n_train,
            "n_train_source": measures.n_train_source,
            "num_labels": measures.num_labels,
        },
        "updates": [layer_json(ckpt, x) for x in spectra.layers] if spectra else [],
        "skipped_updates": [{"name": n, "why": why} for n, why in spectra.skipped]
        if spectra
        else [],
        "spectra_settings": {
            "k": spectra.k,
            "eps": list(spectra.eps),
            "cache_hits": spectra.cache_hits,
            "cache_misses": spectra.cache_misses,
        }
        if spectra
        else None,
        "gap": jsonable(measures.gap) if measures.gap is not None else None,
        "curvature": curvature_json(measures),
        "landscapes": landscapes_json(measures),
        "bounds": {
            "mi": jsonable(measures.mi) if measures.mi is not None else None,
            "theorem1": jsonable(measures.theorem1) if measures.theorem1 is not None else None,
            "compression": compression_json(measures),
        },
        "skipped": dict(measures.skipped),
        "warnings": list(measures.warnings),
        "timings_s": dict(measures.seconds),
        "provenance": jsonable(dict(provenance)) if provenance is not None else None,
    }


def write_report(
    ckpt: Checkpoint,
    out_dir: str | Path,
    measures: Measures,
    *,
    force: bool = False,
    content_key: str | None = None,
    settings_key: str | None = None,
    settings: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.json``, ``report.md``, ``report.html`` (self-contained) and
    ``figures/*.png`` for ``ckpt`` with its computed ``measures`` (and, with a compression
    bound, the chosen quantized tensors as ``quantized.safetensors``).

    The folder appears whole or not at all; an existing report is replaced only with
    ``force=True``.
    """
    out = ensure_writable(out_dir, force=force)
    doc = report_document(
        ckpt,
        measures,
        content_key=content_key,
        settings_key=settings_key,
        settings=settings,
        provenance=provenance,
    )
    with atomic_directory(out) as tmp:
        (tmp / "report.json").write_text(dumps_json(doc))
        (tmp / "report.md").write_text(render_markdown(doc["checkpoint"], measures))
        if measures.compression is not None:
            tensors = {k: v.contiguous() for k, v in measures.compression.quantized.items()}
            save_tensors(tensors, tmp / QUANTIZED_FILE)
        (tmp / "figures").mkdir()
        for kind, ls in measures.landscapes.items():
            ls.save_npz(tmp / f"landscape-{kind}.npz")
            ls.plot(tmp / "figures" / f"landscape-{kind}.png")
        if measures.curvature is not None:
            plot_density(measures.curvature, tmp / "figures" / "hessian-density.png")
        if measures.spectra is not None and measures.spectra.layers:
            plot_spectra(measures.spectra, tmp / "figures" / "spectra.png")
            plot_intruders(measures.spectra, tmp / "figures" / "intruders.png")
        md = (tmp / "report.md").read_text()
        title = f"genbound report: {doc['checkpoint']['variant']}"
        (tmp / "report.html").write_text(markdown_to_html(md, tmp, title))
    return out
