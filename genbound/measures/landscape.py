"""``landscape``: 1-D slices of the training loss around the checkpoint.

Needs a task; same sample as the curvature. Two directions: a filter-normalized random
direction in the adapter's trained factors (the slice moves what was trained) and the
straight path W0 + t dW from the base model (one line in weight space whatever the
factorisation). ``report.json``: ``landscapes``; per slice ``landscape-<kind>.npz`` and a
figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    import torch

    from genbound.checkpoint.model import Checkpoint
    from genbound.landscape import Landscape
    from genbound.tasks.objective import Objective


def base_values(ckpt: Checkpoint, objective: Objective) -> dict[str, torch.Tensor]:
    """W0 of every updated tensor under the objective's parameter names (the start of the
    path from the base model; a new tensor's W0 is its initial value, or zero)."""
    import torch

    params = dict(objective.model.named_parameters())
    out = {}
    for u in ckpt.updates.values():
        names = [n for n in objective.trainable if n == u.param or n.endswith("." + u.param)]
        if len(names) != 1:
            continue
        w0 = u.base_weight(torch.float32)
        w0 = w0.T if u.transposed else w0
        if tuple(w0.shape) == tuple(params[names[0]].shape):
            out[names[0]] = w0
    return out


def _slice(doc, kind: str, key: str) -> float | None:
    value = get(doc, "landscapes", kind, key)
    if isinstance(value, list):
        value = value[0] if value else None
    return number(value)


class LossLandscape(Measure):
    name = "landscape"
    description = "1-D loss slices along a random direction and the path from the base"
    needs_task = True
    section = "landscape"
    scalars: ClassVar[dict[str, Scalar]] = {
        "landscape_curvature": Scalar(
            lambda d: _slice(d, "random-filter", "curvature"),
            "landscape curvature (random direction)",
        ),
        "landscape_flat_fraction": Scalar(
            lambda d: _slice(d, "random-filter", "flat_fraction"),
            "landscape flat fraction (random direction)",
            larger_gap=False,
        ),
        "landscape_ascent": Scalar(
            lambda d: _slice(d, "random-filter", "ascent"),
            "landscape mean ascent at rho (random direction)",
        ),
        "path_curvature": Scalar(
            lambda d: _slice(d, "path", "curvature"),
            "landscape curvature along the path from the base",
        ),
    }

    def compute(self, ctx) -> dict[str, Landscape]:
        from genbound.landscape import landscape_1d

        o = ctx.options
        sub, _ = ctx.sample()
        return {
            "random-filter": landscape_1d(
                ctx.adapted(), kind="random", steps=o.landscape_steps, seed=o.seed
            ),
            "path": landscape_1d(
                sub, kind="path", base=base_values(ctx.checkpoint, sub), steps=o.landscape_steps
            ),
        }

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        return {
            ("landscapes",): {
                kind: jsonable(ls, skip=frozenset({"metadata"}))
                | {"file": f"landscape-{kind}.npz", "figure": f"figures/landscape-{kind}.png"}
                for kind, ls in (result or {}).items()
            }
        }

    def markdown(self, result: dict[str, Landscape], measures) -> list[str]:
        from genbound.numbers import format_number

        if not result:
            return []
        lines = [
            "",
            "## Loss landscape (1-D slices)",
            "",
            "| direction | moves | centre loss | curvature (2c of a quadratic fit) | flat fraction | mean ascent at rho |",
            "|---|---|---|---|---|---|",
        ]
        for kind, ls in result.items():
            lines.append(
                f"| {kind} | {ls.metadata.get('moves', ls.space)} | "
                f"{format_number(ls.centre_loss)} | {format_number(ls.curvature[0])} | "
                f"{ls.flat_fraction:.2f} (tol {ls.tol:g}) | {format_number(ls.ascent)} "
                f"(rho {ls.rho:g}) |"
            )
        for kind in result:
            lines += ["", f"![landscape along {kind}](figures/landscape-{kind}.png)"]
        return lines

    def write_files(self, result: dict[str, Landscape], folder: Path) -> None:
        for kind, ls in result.items():
            ls.save_npz(folder / f"landscape-{kind}.npz")
            ls.plot(folder / "figures" / f"landscape-{kind}.png")


register_measure(LossLandscape())
