"""``hessian_distance``: the Hessian-weighted distance from the pretrained weights (Ju, Li &
Zhang 2022, fine-tuning).

Needs a task. Per updated layer i (a Linear or Conv1D weight with a pretrained value):
q_i = v_i^T H_i v_i with v_i = dW_i = W_i - W_i^pretrained and H_i the Hessian of the mean
training loss with respect to W_i (the whole weight, not only the directions the adapter
reaches), on the report's curvature sample (``options.curvature_examples``), taken as
d^2/dt^2 L(W_i + t dW_i) at t = 0 (:func:`~genbound.curvature.lines.line_curvatures`: one
forward and backward per batch, one double backward per layer). Reported: each q_i with
its standard error over the sample's examples, sum_i sqrt(max(q_i, 0)) (a negative q_i,
possible away from a minimum, counts 0 and is counted) with a delta-method standard error,
and that sum divided by sqrt(N). Ju et al.'s gap scales as sum_i sqrt(C q_i / N) with no
explicit C: a measure to rank runs by, not a certified bound. Their code takes the
largest q_i over batches; this is the mean over the sample. Tensors new to the model
(a head), non-matrix updates and weights outside a Linear/Conv1D are left out, named.
``report.json``: ``hessian_distance``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from genbound.errors import GenboundError
from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from torch import nn

    from genbound.checkpoint.model import Checkpoint
    from genbound.tasks.objective import Objective
    from genbound.tasks.sampling import Sample

#: What q_i is taken with respect to, in words.
SPACE = "each updated layer's weight W_i, along v_i = dW_i = W_i - W_i^pretrained"


@dataclass(frozen=True)
class LayerQ:
    """One layer's q = dW^T H dW.

    Attributes:
        name: the update's name.
        parameter: the model parameter perturbed.
        shape: dW's shape (n, m).
        q: dW^T H dW, H the Hessian of the mean loss in W (loss units).
        stderr: q's standard error over the sample's examples (nan with one example).
        dW_frobenius: ||dW||_F.
        rayleigh: q / ||dW||_F^2, the curvature along dW (nan when dW = 0).
    """

    name: str
    parameter: str
    shape: tuple[int, int]
    q: float
    stderr: float
    dW_frobenius: float
    rayleigh: float


@dataclass(frozen=True)
class HessianDistance:
    """sum_i sqrt(q_i) and its parts.

    Attributes:
        layers: each layer's q, in the checkpoint's update order.
        skipped_updates: (update, why) for updates left out.
        distance: sum_i sqrt(max(q_i, 0)).
        distance_stderr: its standard error (delta method over the examples; nan with one
            example).
        negative_layers: layers with q_i < 0 (counted as 0 in the sum).
        n_train: N, or None when unknown.
        bound: distance / sqrt(N) (None without N); ``bound_stderr`` likewise.
        examples: examples the loss averages over; ``sample``: which.
        space: what q_i is taken with respect to.
    """

    layers: tuple[LayerQ, ...]
    skipped_updates: tuple[tuple[str, str], ...]
    distance: float
    distance_stderr: float
    negative_layers: int
    n_train: int | None
    bound: float | None
    bound_stderr: float | None
    examples: int
    sample: Sample | None = None
    space: str = SPACE


def layer_directions(
    model: nn.Module, checkpoint: Checkpoint
) -> tuple[list[tuple[str, str, nn.Module]], list[tuple[str, str]]]:
    """The updates q is taken for, as (update, parameter, module), and (update, why) for the
    others: a new tensor, a non-matrix, a weight that is not a Linear/Conv1D's own, or one
    shared with another module (tied)."""
    from genbound.adapters.layers import is_linear, linear_shape
    from genbound.tasks.rebuild import resolve_parameter

    params = dict(model.named_parameters())
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    modules = dict(model.named_modules())
    kept, skipped = [], []
    for u in checkpoint.updates.values():
        target = resolve_parameter(set(params), u.param) if u.is_matrix else None
        owner, _, leaf = (target or "").rpartition(".")
        module = modules.get(owner)
        if u.is_new:
            why = "new to the model: no pretrained weight"
        elif not u.is_matrix:
            why = "not a matrix"
        elif target is None:
            why = f"the model has no parameter {u.param!r}"
        elif leaf != "weight" or module is None or not is_linear(module):
            why = "not the weight of a Linear/Conv1D layer"
        elif linear_shape(module)[:2] != tuple(u.shape):
            why = f"shape {tuple(u.shape)} differs from the layer's {linear_shape(module)[:2]}"
        elif uses[id(params[target])] > 1:
            why = "weight shared with another module (tied)"
        else:
            kept.append((u.name, target, module))
            continue
        skipped.append((u.name, why))
    return kept, skipped


def hessian_distance(
    objective: Objective,
    checkpoint: Checkpoint,
    *,
    n_train: int | None = None,
    sample: Sample | None = None,
) -> HessianDistance:
    """Ju et al.'s Hessian distance of ``checkpoint`` on ``objective`` (its merged model);
    the model is left as found."""
    import torch

    from genbound.curvature.lines import line_curvatures

    kept, skipped = layer_directions(objective.model, checkpoint)
    if not kept:
        why = "; ".join(f"{n}: {w}" for n, w in skipped[:3]) or "the checkpoint has no updates"
        raise GenboundError(
            f"Hessian distance: expected updated Linear/Conv1D weights with a pretrained "
            f"value; found none ({why})."
        )
    deltas = [checkpoint.updates[name].delta(torch.float64) for name, _, _ in kept]
    c = line_curvatures(
        objective, [(p, m, d) for (_, p, m), d in zip(kept, deltas, strict=True)]
    )  # (examples, layers)
    n = c.shape[0]
    # units weighted as the objective weighs them (a text by its predicted tokens); the
    # covariance is the ratio estimator's (the plain one for equal weights)
    w = np.concatenate([objective.weights_of(b).numpy() for b in objective.batches])
    q = (w[:, None] * c).sum(axis=0) / w.sum()
    z = w[:, None] * (c - q) / w.mean()
    cov = (z.T @ z) / (n * (n - 1)) if n > 1 else None
    stderr = np.sqrt(np.diag(cov)) if cov is not None else np.full(len(kept), math.nan)
    positive = np.clip(q, 0.0, None)
    grad = np.where(q > 0, 0.5 / np.sqrt(np.where(q > 0, q, 1.0)), 0.0)
    dist = float(np.sqrt(positive).sum())
    dist_se = float(math.sqrt(max(grad @ cov @ grad, 0.0))) if cov is not None else math.nan
    layers = []
    for (name, param, _), d, qi, se in zip(kept, deltas, q, stderr, strict=True):
        fro = float(torch.linalg.vector_norm(d))
        ray = float(qi) / fro**2 if fro > 0 else math.nan
        layers.append(LayerQ(name, param, tuple(d.shape), float(qi), float(se), fro, ray))
    root = math.sqrt(n_train) if n_train else None
    return HessianDistance(
        layers=tuple(layers),
        skipped_updates=tuple(skipped),
        distance=dist,
        distance_stderr=dist_se,
        negative_layers=int((q < 0).sum()),
        n_train=n_train,
        bound=dist / root if root else None,
        bound_stderr=dist_se / root if root else None,
        examples=n,
        sample=sample,
    )


def hessian_distance_json(h: HessianDistance | None) -> dict | None:
    from genbound.report.serialize import jsonable

    if h is None:
        return None
    out = jsonable(h, skip=frozenset({"skipped_updates"}))
    out["skipped_updates"] = [{"name": n, "why": w} for n, w in h.skipped_updates]
    return out


def _pm(value: float, se: float) -> str:
    from genbound.numbers import format_number

    return format_number(value) + (f" ± {se:.2g}" if math.isfinite(se) else "")


class HessianDistanceMeasure(Measure):
    name = "hessian_distance"
    description = "Hessian-weighted distance from the pretrained weights (Ju et al. 2022)"
    needs_task = True
    section = "curvature"
    scalars: ClassVar[dict[str, Scalar]] = {
        "hessian_distance": Scalar(
            lambda d: number(get(d, "hessian_distance", "distance")),
            "sum over layers of sqrt(dW^T H dW)",
        ),
        "hessian_distance_bound": Scalar(
            lambda d: number(get(d, "hessian_distance", "bound")),
            "sum over layers of sqrt(dW^T H dW), divided by sqrt(N)",
        ),
    }

    def compute(self, ctx) -> HessianDistance:
        sub, sample = ctx.sample()
        return hessian_distance(sub, ctx.checkpoint, n_train=ctx.n_train, sample=sample)

    def json(self, result, ckpt) -> dict:
        return {("hessian_distance",): hessian_distance_json(result)}

    def markdown(self, result: HessianDistance, measures) -> list[str]:
        from genbound.numbers import format_number

        h = result
        neg = f"; {h.negative_layers} with q < 0, counted as 0" if h.negative_layers else ""
        lines = [
            "",
            "## Hessian distance",
            "",
            f"Ju, Li & Zhang (2022): per layer q = dWᵀ H dW, H the Hessian of the mean "
            f"training loss over {h.examples:,} examples with respect to {SPACE}; mean over "
            "the examples, ± one standard error over them.",
            "",
            f"- sum over {len(h.layers)} layers of sqrt(q): {_pm(h.distance, h.distance_stderr)}"
            f"{neg}",
        ]
        if h.bound is not None:
            lines.append(
                f"- divided by sqrt(N), N = {h.n_train:,}: "
                f"{_pm(h.bound, h.bound_stderr or math.nan)} (a measure up to an unknown "
                "constant, not a certified bound)"
            )
        if h.skipped_updates:
            lines.append(
                "- left out: "
                + ", ".join(f"`{n}` ({w})" for n, w in h.skipped_updates[:6])
                + (f" and {len(h.skipped_updates) - 6} more" if len(h.skipped_updates) > 6 else "")
            )
        lines += ["", "| layer | ‖dW‖_F | q = dWᵀ H dW | q / ‖dW‖_F² |", "|---|---|---|---|"]
        for x in h.layers:
            lines.append(
                f"| `{x.name}` | {format_number(x.dW_frobenius)} | {_pm(x.q, x.stderr)} | "
                f"{format_number(x.rayleigh) if math.isfinite(x.rayleigh) else 'n/a'} |"
            )
        return lines

    def reading(self, result: HessianDistance, measures) -> list[str]:
        from genbound.numbers import format_number

        h = result
        neg = (
            f" {h.negative_layers} of {len(h.layers)} layers curve downward along dW "
            "(q < 0: not at a minimum in that direction) and count 0."
            if h.negative_layers
            else ""
        )
        per_n = (
            f" ({format_number(h.bound)} divided by sqrt(N), N = {h.n_train:,})"
            if h.bound is not None
            else ""
        )
        return [
            f"The Hessian distance of Ju et al. (2022), sum over layers of sqrt(dWᵀ H dW), "
            f"is {_pm(h.distance, h.distance_stderr)} on {h.examples:,} training examples"
            f"{per_n}: their bound on the gap scales with it up to an unknown constant, so "
            f"it ranks runs rather than certifying one; compare it with the measured gap in "
            f"a sweep.{neg}"
        ]

    def log_values(self, result: HessianDistance, *, per_layer: bool, intruder_eps: float):
        out = {"hessian_distance": result.distance}
        if result.bound is not None:
            out["hessian_distance_bound"] = result.bound
        if per_layer:
            out.update({f"hessian_q/{x.name}": x.q for x in result.layers})
        return out


register_measure(HessianDistanceMeasure())
