"""The flatness searches (:mod:`genbound.flatness`) on a checkpoint: the two spaces its
model is perturbed in, and the four searches with the PAC-Bayes expressions in each.

Both spaces work on an objective of the merged model (each updated parameter holds
W0 + dW, as tasks build it) and write perturbed values into its parameters; the caller
restores them (:func:`flatness_of` runs in :func:`genbound.state.preserved` with
``parameters=True``).

* ``merged``: every entry of each updated parameter of the merged model, W = W0 + dW as the
  model holds it (not only the directions an adapter reaches), and likewise the other
  trained tensors (a head, biases) as the model holds them; the reference w0 is the
  pretrained value W0 (a new head: its recorded initial value, else 0), so
  ||w - w0|| = ||dW||.
* ``trained``: the checkpoint's trained tensors
  (:func:`~genbound.bounds.compression.trainable_tensors`: B and A, dW of dense updates,
  DoRA's magnitude, VeRA's b and d, a subspace run's z), merged into the model as the
  Gaussian certificate does; the reference w0 is the value the checkpoint records from
  before training (:attr:`~genbound.checkpoint.model.Checkpoint.initial`, a genbound run's
  A and VeRA's d), 0 for the others. Its adversarial searches need dW to be
  differentiable in these tensors (a subspace run's is not: they are left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.flatness import (
    KINDS,
    Evaluate,
    Gradient,
    Search,
    SearchSettings,
    pacbayes_expression,
    pacbayes_magnitude_expression,
    search,
)
from genbound.options import SHARPNESS_SPACES

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.tasks.objective import Objective

__all__ = [
    "SPACES",
    "Space",
    "SpaceFlatness",
    "flatness_of",
    "loss_gradient",
    "mean_error",
    "merged_space",
    "space_flatness",
    "trained_space",
]

#: The spaces the searches perturb, by name, in words.
SPACES = SHARPNESS_SPACES


@dataclass(frozen=True)
class Space:
    """One space the searches perturb.

    Attributes:
        name: a key of :data:`SPACES`.
        reference: what w0 is, in words.
        tensors: w, name -> float64 tensor.
        displacement: w - w0, same names and shapes.
        evaluate: mean train error with ``tensors`` replaced (writes the model's parameters).
        gradient: gradient of the mean train loss (writes them too), or None.
        no_gradient: why there is no gradient (empty when there is one).
    """

    name: str
    reference: str
    tensors: dict[str, torch.Tensor]
    displacement: dict[str, torch.Tensor]
    evaluate: Evaluate
    gradient: Gradient | None
    no_gradient: str = ""


@dataclass(frozen=True)
class SpaceFlatness:
    """The four searches and the PAC-Bayes expressions in one space.

    Attributes:
        space: a key of :data:`SPACES`; ``description`` says what it perturbs.
        reference: what w0 is.
        coordinates: omega, the scalars perturbed.
        sq_distance: ||w - w0||^2.
        base_error: the unperturbed model's train error on the sample.
        searches: by kind (:data:`genbound.flatness.KINDS`), those that ran.
        unavailable: kind -> why it did not run.
        m: the training set's size in the expressions.
        pacbayes: ||w - w0||^2 / (4 sigma^2) + ln(m / sigma) + 10, sigma from the plain
            Gaussian search (None without it); ``pacbayes_normalised`` = sqrt(pacbayes / m).
        pacbayes_magnitude: the magnitude-aware expression with sigma' from the
            magnitude-aware Gaussian search; ``pacbayes_magnitude_normalised`` likewise.
    """

    space: str
    description: str
    reference: str
    coordinates: int
    sq_distance: float
    base_error: float
    searches: dict[str, Search]
    unavailable: dict[str, str] = field(default_factory=dict)
    m: int = 1
    pacbayes: float | None = None
    pacbayes_normalised: float | None = None
    pacbayes_magnitude: float | None = None
    pacbayes_magnitude_normalised: float | None = None


def mean_error(objective: Objective) -> float:
    """The objective's mean per-unit error (its metric's, weighted by the units'
    weights), in eval mode."""
    from genbound.gap import mean_error as weighted_mean_error

    return weighted_mean_error(objective)


def loss_gradient(objective: Objective, names: list[str]) -> dict[str, torch.Tensor]:
    """Gradient of the mean per-unit loss (``objective.loss``) over the objective's batches
    with respect to the named parameters, float64, in eval mode; flags, gradients, modes
    and generators are left as found."""
    from genbound.state import preserved

    model = objective.model
    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    total = [torch.zeros(p.shape, dtype=torch.float64) for p in wanted]
    n = max(objective.total_weight, 1e-300)
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in wanted:
            p.requires_grad_(True)
        for batch in objective.batches:
            loss = objective.weighted_sum(objective.loss(model, batch), batch) / n
            grads = torch.autograd.grad(loss, wanted, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t += g.detach().to(torch.float64).cpu()
    return dict(zip(names, total, strict=True))


def merged_space(objective: Objective, base: Mapping[str, torch.Tensor]) -> Space:
    """The ``merged`` space of ``objective.trainable``, w0 = ``base`` (W0 by the model's
    parameter names, e.g. :func:`genbound.measures.landscape.base_values`)."""
    params = dict(objective.model.named_parameters())
    names = list(objective.trainable)
    if not names:
        raise GenboundError("flatness: the objective names no trained parameters.")
    w, disp = {}, {}
    for n in names:
        if n not in base:
            raise GenboundError(
                f"flatness in the merged space: no pretrained value W0 of {n!r}; expected "
                "one for every updated tensor."
            )
        w[n] = params[n].detach().to(torch.float64).cpu().clone()
        disp[n] = w[n] - torch.as_tensor(base[n]).to(torch.float64).cpu()

    def write(tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, t in tensors.items():
                params[n].copy_(t.to(params[n].dtype))

    def evaluate(tensors: Mapping[str, torch.Tensor]) -> float:
        write(tensors)
        return mean_error(objective)

    def gradient(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        write(tensors)
        return loss_gradient(objective, names)

    return Space("merged", "W0, the pretrained weights", w, disp, evaluate, gradient)


def trained_space(checkpoint: Checkpoint, objective: Objective) -> Space:
    """The ``trained`` space of ``checkpoint`` (see the module docstring)."""
    from genbound.bounds.compression import trainable_tensors, with_trainable_tensors
    from genbound.bounds.gaussian import displacement
    from genbound.tasks.rebuild import load_updates_into, resolve_parameter

    model = objective.model
    w = {n: t.detach().to(torch.float64).cpu() for n, t in trainable_tensors(checkpoint).items()}
    initial = dict(checkpoint.initial or {})
    where = f"{checkpoint.path}: the recorded initial values"
    disp = displacement(w, initial, where=where)
    given = [n for n in w if n in initial]
    reference = (
        f"the values before training the checkpoint records for {len(given)} of {len(w)} "
        f"trained tensors (e.g. {given[0]!r}), 0 for the others"
        if given
        else "0 (the checkpoint records no values from before training)"
    )
    names = {n for n, _ in model.named_parameters()}

    def evaluate(tensors: Mapping[str, torch.Tensor]) -> float:
        load_updates_into(model, with_trainable_tensors(checkpoint, tensors))
        return mean_error(objective)

    def deltas(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """dW of each trained update in the stored orientation, by the model's name."""
        out = {}
        for u in with_trainable_tensors(checkpoint, tensors).updates.values():
            target = resolve_parameter(names, u.param)
            if target is not None and u.trained_tensors():
                out[target] = u.delta(torch.float64, stored=True)
        return out

    def gradient(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in tensors.items()}
        with torch.enable_grad():
            dw = deltas(leaves)
        load_updates_into(model, with_trainable_tensors(checkpoint, tensors))
        g = loss_gradient(objective, list(dw))
        grads = torch.autograd.grad(
            list(dw.values()), list(leaves.values()), [g[n] for n in dw], allow_unused=True
        )
        return {
            n: torch.zeros_like(leaves[n]) if x is None else x.detach()
            for n, x in zip(leaves, grads, strict=True)
        }

    with torch.enable_grad():
        probe = deltas({n: t.clone().requires_grad_(True) for n, t in w.items()})
    if checkpoint.subspace is None and probe and all(d.requires_grad for d in probe.values()):
        return Space("trained", reference, w, disp, evaluate, gradient)
    why = "dW is not rebuilt differentiably from these tensors (a subspace run's z)"
    return Space("trained", reference, w, disp, evaluate, None, why)


def _expressions(space: Space, searches: Mapping[str, Search], m: int, eps: float) -> dict:
    """The PAC-Bayes expressions of the Gaussian searches that ran, and sqrt(. / m)."""
    disp = torch.cat([d.reshape(-1) for d in space.displacement.values()]).numpy()
    out: dict[str, float | None] = {}
    if "gaussian" in searches:
        out["pacbayes"] = pacbayes_expression(
            float(np.dot(disp, disp)), searches["gaussian"].scale, m
        )
    if "gaussian_magnitude" in searches:
        sigma = searches["gaussian_magnitude"].scale
        out["pacbayes_magnitude"] = pacbayes_magnitude_expression(disp, sigma, m, eps)
    for key in list(out):
        value = out[key]
        out[f"{key}_normalised"] = math.sqrt(value / m) if value is not None and value > 0 else None
    return out


def space_flatness(
    space: Space,
    *,
    m: int,
    settings: SearchSettings,
    adversarial: SearchSettings | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> SpaceFlatness:
    """The searches of ``kinds`` in ``space`` (the adversarial ones with ``adversarial``
    settings, default ``settings``) and the expressions; writes the model's parameters."""
    base = space.evaluate(space.tensors)
    searches: dict[str, Search] = {}
    unavailable: dict[str, str] = {}
    for kind in kinds:
        if kind.startswith("adversarial") and space.gradient is None:
            unavailable[kind] = space.no_gradient
            continue
        s = (adversarial or settings) if kind.startswith("adversarial") else settings
        searches[kind] = search(
            kind, space.tensors, space.evaluate, space.gradient, settings=s, base_error=base
        )
    disp = torch.cat([d.reshape(-1) for d in space.displacement.values()])
    return SpaceFlatness(
        space=space.name,
        description=SPACES[space.name],
        reference=space.reference,
        coordinates=int(disp.numel()),
        sq_distance=float(torch.dot(disp, disp)),
        base_error=base,
        searches=searches,
        unavailable=unavailable,
        m=int(m),
        **_expressions(space, searches, int(m), settings.eps),
    )


def flatness_of(
    checkpoint: Checkpoint,
    objective: Objective,
    base: Mapping[str, torch.Tensor],
    *,
    m: int,
    settings: SearchSettings,
    adversarial: SearchSettings | None = None,
    spaces: tuple[str, ...] = ("merged", "trained"),
) -> dict[str, SpaceFlatness]:
    """Every search in each of ``spaces`` on ``objective`` (the merged model on a sample of
    the training set), m the training set's size; the model is left exactly as found."""
    from genbound.state import preserved

    unknown = sorted(set(spaces) - set(SPACES))
    if unknown:
        raise GenboundError(
            f"flatness: unknown space(s) {unknown}; expected some of {list(SPACES)}."
        )
    with preserved(objective.model, parameters=True):
        # every space reads the model before any search writes it
        built = [
            merged_space(objective, base)
            if name == "merged"
            else trained_space(checkpoint, objective)
            for name in spaces
        ]
        return {
            s.name: space_flatness(s, m=m, settings=settings, adversarial=adversarial)
            for s in built
        }
