"""Write a report folder atomically: a temporary folder filled, then renamed into place."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import genbound
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError
from genbound.report.summary import UpdateSummary

SCHEMA = "genbound.report/1"


def checkpoint_info(ckpt: Checkpoint) -> dict:
    """The checkpoint-level facts every report starts with."""
    hp = ckpt.hparams
    return {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "variant": ckpt.variant,
        "adapter_name": ckpt.adapter_name,
        "hparams": {
            "rank": hp.rank,
            "alpha": hp.alpha,
            "scale": hp.scale,
            "rslora": hp.rslora,
            "chain": hp.chain,
            "selector_seed": hp.selector_seed,
            "targets": list(hp.targets),
            **{
                k: v
                for k, v in hp.extra.items()
                if isinstance(v, (int, float, str, bool, list, dict, type(None)))
            },
        },
        "dtype": str(ckpt.dtype).removeprefix("torch."),
        "bits_per_param": ckpt.bits_per_param,
        "n_train": ckpt.n_train,
        "base_model": str(ckpt.base.path) if ckpt.base is not None else None,
        "num_trainable": ckpt.num_trainable,
        "num_trainable_by_formula": ckpt.num_trainable_by_formula(),
        "metrics": {k: v for k, v in ckpt.metrics.items() if not k.endswith("_history")},
        "notes": list(ckpt.notes),
    }


def render_markdown(info: dict, updates: list[UpdateSummary]) -> str:
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
        "| module | kind | shape | rank | trainable | ‖dW‖₂ | ‖dW‖_F |",
        "|---|---|---|---|---|---|---|",
    ]
    for u in updates:
        spec = f"{u.spectral_norm:.4g}" if u.spectral_norm is not None else "needs base"
        frob = f"{u.frobenius_norm:.4g}" if u.frobenius_norm is not None else "needs base"
        shape = " x ".join(map(str, u.shape))
        lines.append(
            f"| `{u.name}` | {u.kind} | {shape} | {u.rank} | {u.trainable:,} | {spec} | {frob} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    ckpt: Checkpoint,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: Callable[[Iterable[UpdateSummary], int], Iterable[UpdateSummary]] | None = None,
) -> Path:
    """Compute the data-free summary of ``ckpt`` and write ``report.json`` and ``report.md``.

    The folder appears whole or not at all; an existing report is replaced only with
    ``force=True``. ``progress`` may wrap the per-update iterator (the CLI's bar).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise GenboundError(f"{out}: a report already exists there; pass --force to replace it.")
    from genbound.report.summary import summarize_updates

    start = time.perf_counter()
    it = summarize_updates(ckpt)
    updates = list(progress(it, len(ckpt.updates)) if progress else it)
    info = checkpoint_info(ckpt)
    doc = {
        "schema": SCHEMA,
        "genbound_version": genbound.__version__,
        "checkpoint": info,
        "updates": [u.to_json() for u in updates],
        "timings_s": {"spectra": time.perf_counter() - start},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "report.md").write_text(render_markdown(info, updates))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
