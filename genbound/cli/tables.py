"""Rich tables that show a checkpoint as genbound understood it."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError


def checkpoint_header(ckpt: Checkpoint) -> Text:
    hp = ckpt.hparams
    parts = [
        f"{ckpt.path}  [{ckpt.format}]",
        f"variant {ckpt.variant}"
        + (f", rank {hp.rank}" if hp.rank else "")
        + (f", alpha {hp.alpha:g}" if hp.alpha else "")
        + (f", scale {hp.scale:g}" if hp.scale else "")
        + (" (rsLoRA)" if hp.rslora else "")
        + (f", chain {hp.chain}" if hp.chain > 1 else ""),
        f"dtype {str(ckpt.dtype).removeprefix('torch.')} (q = {ckpt.bits_per_param} bits); "
        f"trainable {ckpt.num_trainable:,} (formula {ckpt.num_trainable_by_formula():,}); "
        f"n_train {ckpt.n_train if ckpt.n_train is not None else 'unknown'}",
        f"base model {ckpt.base.path if ckpt.base is not None else 'not found' + (f' (named: {ckpt.base_ref})' if ckpt.base_ref else '')}",
    ]
    if ckpt.others:
        parts.append(f"other adapters: {', '.join(ckpt.others)} (select with --adapter NAME)")
    parts += [f"note: {n}" for n in ckpt.notes]
    return Text("\n".join(parts))


def updates_table(ckpt: Checkpoint) -> Table:
    table = Table(title=f"{len(ckpt.updates)} updates")
    for col, just in (
        ("module", "left"),
        ("kind", "left"),
        ("shape (n x m)", "right"),
        ("rank", "right"),
        ("trainable", "right"),
        ("||dW||_2", "right"),
    ):
        table.add_column(col, justify=just, overflow="fold")
    for name, u in ckpt.updates.items():
        try:
            norm = f"{u.spectral_norm():.4g}"
        except GenboundError:
            norm = "needs --base"
        shape = " x ".join(map(str, u.shape)) + (" (T)" if u.transposed else "")
        table.add_row(name, u.kind, shape, str(u.rank), f"{u.num_trainable:,}", norm)
    return table
