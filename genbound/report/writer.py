"""Write a report folder atomically: a temporary folder filled, then renamed into place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import genbound
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError, input_error
from genbound.io import atomic_directory
from genbound.measures import compression, curvature
from genbound.measures.compression import QUANTIZED_FILE
from genbound.measures.run import Measures
from genbound.measures.spectra import layer_json
from genbound.report.html import markdown_to_html
from genbound.report.markdown import render_markdown
from genbound.report.serialize import dumps_json, jsonable

SCHEMA = "genbound.report/1"


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
        "subspace": ckpt.subspace.summary() if ckpt.subspace is not None else None,
        "metrics": jsonable({k: v for k, v in ckpt.metrics.items() if not k.endswith("_history")}),
        "notes": list(ckpt.notes),
    }


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


def curvature_json(measures: Measures) -> dict | None:
    """The ``curvature`` entry of ``report.json``."""
    return curvature.curvature_json(measures.curvature)


def compression_json(measures: Measures) -> dict | None:
    """The ``bounds.compression`` entry of ``report.json``."""
    return compression.compression_json(measures.compression)


__all__ = [
    "QUANTIZED_FILE",
    "SCHEMA",
    "check_output_folder",
    "checkpoint_info",
    "compression_json",
    "curvature_json",
    "ensure_writable",
    "layer_json",
    "report_document",
    "write_report",
]


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
    doc = {
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
        **{key: None for key in MEASURE_KEYS},
        "bounds": {},
        "measures": {},
    }
    for m in measures.measures():
        for path, value in m.json(measures.result(m.name), ckpt).items():
            _put(doc, path, value)
    doc["skipped"] = dict(measures.skipped)
    doc["warnings"] = list(measures.warnings)
    doc["timings_s"] = dict(measures.seconds)
    doc["provenance"] = jsonable(dict(provenance)) if provenance is not None else None
    return doc


#: Top-level keys measures fill, in the order a report lists them.
MEASURE_KEYS = ("updates", "skipped_updates", "spectra_settings", "gap", "curvature", "landscapes")


def _put(doc: dict, path: tuple[str, ...], value: Any) -> None:
    """``doc[path[0]]...[path[-1]] = value``, making the objects on the way."""
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


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
        (tmp / "figures").mkdir()
        for m in measures.measures():
            result = measures.result(m.name)
            if result is not None:
                m.write_files(result, tmp)
        md = (tmp / "report.md").read_text()
        title = f"genbound report: {doc['checkpoint']['variant']}"
        (tmp / "report.html").write_text(markdown_to_html(md, tmp, title))
    return out
