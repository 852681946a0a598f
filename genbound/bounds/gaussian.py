"""Gaussian PAC-Bayes-kl certificate of a randomised predictor around a checkpoint's trained
tensors (Dziugaite & Roy 2017; evaluated as in Perez-Ortiz et al. 2021).

Coordinates: the D scalars of the checkpoint's trained tensors
(:func:`~genbound.bounds.compression.trainable_tensors`: B and A of low-rank updates, dW of
dense updates, a new head's value minus its recorded initial value, ...), flattened, in
float64. A sampled model has these tensors replaced by theta ~ Q, rounded to the tensors'
dtypes and merged into the model as the compression bound does; the predictor bounded is
that randomised model.

Prior and posterior (theta_0 the prior centre, Delta = theta_hat - theta_0):

* ``isotropic``: P = N(theta_0, sigma^2 I), Q = N(theta_hat, sigma^2 I),
  KL(Q || P) = ||Delta||^2 / (2 sigma^2).
* ``magnitude``: Q = N(theta_hat, diag(s^2)) with s_i^2 = sigma^2 Delta_i^2 + eps^2
  (magnitude-aware, Jiang et al. 2020), P = N(theta_0, lambda^2 I) with lambda from the
  same grid (the prior's variance does not depend on the data; lambda is chosen to
  minimise the KL, a choice paid for by the union bound),
  KL = 1/2 sum_i [(s_i^2 + Delta_i^2) / lambda^2 - 1 + ln(lambda^2 / s_i^2)].

theta_0 must be fixed before the data is seen. It is 0 in these coordinates unless given:
that is the pretrained weight for dense updates (dW = 0), a new head's recorded initial
value (else 0), B = 0 for low-rank updates, and 0 for any other trained tensor whose
initial value the checkpoint does not record (a trained A, DoRA's magnitude, VeRA's d): a
valid, data-free centre that pays the full ||A||^2 / (2 sigma^2). Never the trained value.
:func:`gaussian_bound_on` is given the initial values a genbound run records (its
manifest's ``initial``: each link's A drawn from the seed, VeRA's d); a subspace run's
coordinates are z, which starts at 0.

The bound, with probability >= 1 - delta - delta' over the N training units and the
Monte Carlo draws (M the number of (candidate, sigma, lambda) choices):

    e_Q(S) <= e_mc := R kl^-1(e_hat / R, ln(2 / delta') / m)          (sample convergence)
    test error of Q <= R kl^-1(e_mc / R, (KL + ln(2 sqrt(N) / delta) + ln M) / N)

Monte Carlo estimate: m models theta_j ~ Q drawn independently, each evaluated on k
training units drawn uniformly without replacement, independently for each model (k = N:
the whole training set for each). Each model's mean error Y_j in [0, R] then has
expectation exactly e_Q(S), the posterior's error on the training set, and the Y_j are
independent, so the Chernoff kl bound above holds for any k; k = ceil(N / m) (the default)
costs about one pass over the training set in all.

Choice: every (candidate, sigma) is scored on a pilot (its own seeded draws, on a fixed
uniform sample of the training units); the best estimated bound is kept, and the final
Monte Carlo estimate uses fresh draws. The union bound over all M choices makes any
data-dependent choice valid; the fresh draws make the sample-convergence step hold for
the chosen posterior.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from genbound.bounds.compression import _vacuity, trainable_tensors, with_trainable_tensors
from genbound.bounds.kl import kl_inverse
from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.tasks.objective import Objective

__all__ = [
    "CANDIDATES",
    "SIGMAS",
    "GaussianBoundResult",
    "GaussianChoice",
    "gaussian_bound",
    "gaussian_bound_on",
    "gaussian_kl",
]

log = logging.getLogger(__name__)

CANDIDATES = ("isotropic", "magnitude")
#: The default grid of sigma (and of the magnitude-aware prior's lambda): 1e-4 ... 1 in
#: half-decade steps.
SIGMAS = tuple(10.0 ** (k / 2) for k in range(-8, 1))

#: ``evaluate(tensors, units) -> mean error`` of the model with its trained tensors replaced
#: by ``tensors`` (name -> tensor), over the training units ``units`` (indices into the N
#: units, int64 array) or over all N units when ``units`` is None.
Evaluate = Callable[[Mapping[str, torch.Tensor], "np.ndarray | None"], float]


@dataclass(frozen=True)
class GaussianChoice:
    """One (candidate, sigma) scored on the pilot.

    Attributes:
        candidate: ``"isotropic"`` or ``"magnitude"``.
        sigma: the posterior's sigma.
        prior_sigma: the prior's standard deviation (sigma for ``isotropic``; lambda, the
            grid value minimising the KL, for ``magnitude``).
        kl: KL(Q || P), nats.
        rhs: (KL + ln(2 sqrt(N) / delta) + ln M) / N, nats.
        floor: R kl^-1(0, rhs), the bound with zero train error.
        pilot_error: mean error of the pilot's models on the pilot units (None: not
            evaluated, as its floor could not beat the best estimate found).
        pilot_bound: R kl^-1(pilot_error / R, rhs), an estimate used only to choose.
    """

    candidate: str
    sigma: float
    prior_sigma: float
    kl: float
    rhs: float
    floor: float
    pilot_error: float | None
    pilot_bound: float | None


@dataclass(frozen=True)
class GaussianBoundResult:
    """The Gaussian PAC-Bayes-kl bound of the chosen posterior, with everything to check it.

    Attributes:
        bound: R kl^-1(mc_bound / R, rhs): the randomised predictor's test error is at most
            this with probability >= 1 - delta - delta_mc.
        candidate, sigma, prior_sigma, eps: the chosen posterior and prior (see the module
            docstring; eps is used by ``magnitude`` only).
        kl: KL(Q || P) in nats (float64).
        num_coordinates: D, the trained scalars.
        sq_distance: ||theta_hat - theta_0||^2 over the D coordinates.
        samples: m, models drawn for the Monte Carlo estimate.
        examples_per_sample: k, training units each model is evaluated on.
        mc_error: e_hat, the mean of the m models' errors.
        mc_rhs: ln(2 / delta_mc) / m, nats.
        mc_bound: R kl^-1(mc_error / R, mc_rhs), the bound on the posterior's train error.
        rhs: (KL + ln(2 sqrt(N) / delta) + ln(num_choices)) / N, nats.
        n_train: N.
        delta, delta_mc: confidences of the PAC-Bayes step and of the sample-convergence
            step.
        num_choices: M, the (candidate, sigma, lambda) choices paid for (ln M nats).
        seed: seeds the pilot's and the final draws.
        pilot: every (candidate, sigma) scored, in the order of the grid.
        pilot_examples, pilot_samples: units and models per choice of the pilot.
        vacuous_at, vacuous, chance, error_name, error_range: as for the compression bound.
        assumptions, warnings.
    """

    bound: float
    candidate: str
    sigma: float
    prior_sigma: float
    eps: float
    kl: float
    num_coordinates: int
    sq_distance: float
    samples: int
    examples_per_sample: int
    mc_error: float
    mc_rhs: float
    mc_bound: float
    rhs: float
    n_train: int
    delta: float
    delta_mc: float
    num_choices: int
    seed: int
    pilot: tuple[GaussianChoice, ...]
    pilot_examples: int
    pilot_samples: int
    vacuous_at: float
    vacuous: bool
    chance: float | None
    error_name: str
    error_range: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = ()


# -- KL and the posterior -----------------------------------------------------------------


def gaussian_kl(
    displacement: np.ndarray, posterior_var: np.ndarray | float, prior_var: float
) -> float:
    """KL(N(theta_0 + displacement, diag(posterior_var)) || N(theta_0, prior_var I)), nats.

    Args:
        displacement: (D,) theta_hat - theta_0, float64.
        posterior_var: (D,) or a scalar, > 0.
        prior_var: > 0.
    """
    d = np.asarray(displacement, dtype=np.float64).reshape(-1)
    s2 = np.broadcast_to(np.asarray(posterior_var, dtype=np.float64), d.shape)
    ratio = s2 / prior_var
    return float(0.5 * np.sum(ratio - 1.0 - np.log(ratio)) + 0.5 * np.dot(d, d) / prior_var)


def _posterior_var(candidate: str, sigma: float, disp: np.ndarray, eps: float):
    """(D,) or scalar variance of the posterior."""
    if candidate == "isotropic":
        return sigma * sigma
    return sigma * sigma * disp * disp + eps * eps


def _kl_choice(candidate: str, sigma: float, disp: np.ndarray, eps: float, grid) -> tuple:
    """(prior sigma, KL): sigma itself for ``isotropic``, the grid's KL minimiser otherwise."""
    if candidate == "isotropic":
        return sigma, float(np.dot(disp, disp)) / (2.0 * sigma * sigma)
    var = _posterior_var(candidate, sigma, disp, eps)
    kls = [(gaussian_kl(disp, var, lam * lam), lam) for lam in grid]
    kl, lam = min(kls)
    return lam, kl


def _draw(
    tensors: Mapping[str, torch.Tensor],
    disp: Mapping[str, torch.Tensor],
    candidate: str,
    sigma: float,
    eps: float,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One theta ~ Q (float64 tensors, same names and shapes)."""
    out = {}
    for name, t in tensors.items():
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        if candidate == "isotropic":
            std = sigma
        else:
            std = torch.sqrt(sigma * sigma * disp[name] ** 2 + eps * eps)
        out[name] = t + std * noise
    return out


def _streams(seed: int, stage: int) -> tuple[torch.Generator, np.random.Generator]:
    """Independent noise and unit-sampling streams of one stage (0: pilot, 1: final)."""
    ss = np.random.SeedSequence([seed, stage])
    gen = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
    return gen, np.random.default_rng(ss.spawn(1)[0])


# -- the bound --------------------------------------------------------------------------------


def _count(name: str, value, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        top = f" and <= {maximum}" if maximum is not None else ""
        raise GenboundError(
            f"Gaussian PAC-Bayes bound: {name} must be an integer >= {minimum}{top}; "
            f"found {value!r}."
        )
    return int(value)


def _flat(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        v = torch.as_tensor(t).detach().to(torch.float64).cpu()
        if v.numel() == 0 or not bool(torch.isfinite(v).all()):
            raise GenboundError(
                f"Gaussian PAC-Bayes bound: trained tensor {name!r} must be non-empty and "
                f"finite; found {v.numel()} values, {int((~torch.isfinite(v)).sum())} not finite."
            )
        out[name] = v
    if not out:
        raise GenboundError("Gaussian PAC-Bayes bound: expected trained tensors; found none.")
    return out


def displacement(
    tensors: Mapping[str, torch.Tensor],
    centre: Mapping[str, torch.Tensor] | None,
    *,
    where: str = "Gaussian PAC-Bayes bound: prior_centre",
) -> dict[str, torch.Tensor]:
    """theta - theta_0 per float64 tensor, theta_0 from ``centre`` (0 where it names nothing:
    the tensor itself, not a copy). A GenboundError starting with ``where`` when ``centre``
    names a tensor not in ``tensors`` or has another shape."""
    disp = dict(tensors)
    for name, c in (centre or {}).items():
        if name not in tensors:
            raise GenboundError(
                f"{where} names {name!r}, which is not a trained tensor; expected some of "
                f"{sorted(tensors)[:5]}."
            )
        c = torch.as_tensor(c).detach().to(torch.float64).cpu()
        if tuple(c.shape) != tuple(tensors[name].shape):
            raise GenboundError(
                f"{where}[{name!r}] has shape {tuple(c.shape)}; expected "
                f"{tuple(tensors[name].shape)}."
            )
        disp[name] = tensors[name] - c
    return disp


def _mean_error(evaluate, models, units_of, r: float, what: str) -> float:
    errs = []
    for theta in models:
        e = float(evaluate(theta, units_of()))
        if not 0.0 <= e <= r:
            raise GenboundError(
                f"Gaussian PAC-Bayes bound: the {what} error of a sampled model must lie in "
                f"[0, {r:g}]; found {e!r}."
            )
        errs.append(e)
    return float(np.mean(errs))


def gaussian_bound(
    tensors: Mapping[str, torch.Tensor],
    evaluate: Evaluate,
    n_train: int,
    *,
    samples: int = 100,
    examples_per_sample: int | None = None,
    sigmas: Sequence[float] = SIGMAS,
    candidates: Sequence[str] = CANDIDATES,
    eps: float = 1e-3,
    prior_centre: Mapping[str, torch.Tensor] | None = None,
    delta: float = 0.05,
    delta_mc: float = 0.01,
    pilot_examples: int = 256,
    pilot_samples: int = 1,
    seed: int = 0,
    num_classes: int | None = None,
    error_range: float = 1.0,
    chance: float | None = None,
    error_name: str = "0-1 error",
) -> GaussianBoundResult:
    """The Gaussian PAC-Bayes-kl bound around ``tensors`` (see the module docstring).

    Args:
        tensors: theta_hat, the trained tensors (name -> tensor).
        evaluate: ``evaluate(tensors, units)`` -> the mean error in [0, R] of the model with
            its trained tensors replaced, over the given training units (None: all N).
        n_train: N, the training units ``evaluate`` indexes.
        samples: m, models of the final Monte Carlo estimate.
        examples_per_sample: k in [1, N], units each model is evaluated on (None:
            ceil(N / m)).
        sigmas: the grid of sigma (and of lambda), each > 0.
        candidates: some of :data:`CANDIDATES`.
        eps: the magnitude-aware posterior's floor standard deviation, > 0.
        prior_centre: theta_0 for some tensors (fixed before seeing the data); 0 elsewhere.
        delta, delta_mc: confidences of the PAC-Bayes and sample-convergence steps.
        pilot_examples, pilot_samples: units (at most N) and models per choice of the pilot.
        seed: seeds every draw.
        num_classes, error_range, chance, error_name: as for
            :func:`~genbound.bounds.compression.compression_bound`.
    """
    n = _count("n_train", n_train, 1)
    m = _count("samples", samples, 1)
    k = math.ceil(n / m) if examples_per_sample is None else examples_per_sample
    k = _count("examples_per_sample", k, 1, n)
    n_pilot = min(_count("pilot_examples", pilot_examples, 1), n)
    m_pilot = _count("pilot_samples", pilot_samples, 1)
    seed = _count("seed", seed, 0)
    for name, v in (("delta", delta), ("delta_mc", delta_mc)):
        if not 0.0 < v < 1.0:
            raise GenboundError(
                f"Gaussian PAC-Bayes bound: {name} must lie in (0, 1); found {v!r}."
            )
    if not delta + delta_mc < 1.0:
        raise GenboundError(
            f"Gaussian PAC-Bayes bound: delta + delta_mc must be < 1; found {delta + delta_mc!r}."
        )
    grid = sorted({float(s) for s in sigmas})
    if not grid or not all(math.isfinite(s) and s > 0 for s in grid):
        raise GenboundError(
            f"Gaussian PAC-Bayes bound: sigmas must be finite numbers > 0; found {list(sigmas)!r}."
        )
    cands = list(dict.fromkeys(candidates))
    if not cands or set(cands) - set(CANDIDATES):
        raise GenboundError(
            f"Gaussian PAC-Bayes bound: candidates must be some of {list(CANDIDATES)}; "
            f"found {list(candidates)!r}."
        )
    if not (math.isfinite(eps) and eps > 0):
        raise GenboundError(f"Gaussian PAC-Bayes bound: eps must be > 0; found {eps!r}.")
    r = float(error_range)
    vac_at, chance_level, vac_note = _vacuity(num_classes, chance, r, error_name)

    theta = _flat(tensors)
    disp_t = displacement(theta, prior_centre)
    disp = torch.cat([d.reshape(-1) for d in disp_t.values()]).numpy()
    num_choices = sum(len(grid) if c == "isotropic" else len(grid) ** 2 for c in cands)
    confidence = math.log(2.0 * math.sqrt(n) / delta) + math.log(num_choices)

    scored = []
    for c in cands:
        for s in grid:
            lam, kl = _kl_choice(c, s, disp, eps, grid)
            rhs = (kl + confidence) / n
            scored.append([c, s, lam, kl, rhs, r * kl_inverse(0.0, rhs), None, None])

    # pilot: common pilot units, each choice's own draws; choices in order of their floor
    gen, rng = _streams(seed, 0)
    pilot_units = np.sort(rng.choice(n, size=n_pilot, replace=False)) if n_pilot < n else None
    best = math.inf
    if len(scored) > 1:
        for row in sorted(scored, key=lambda x: x[5]):
            if row[5] >= best:
                continue
            models = (_draw(theta, disp_t, row[0], row[1], eps, gen) for _ in range(m_pilot))
            row[6] = _mean_error(evaluate, models, lambda: pilot_units, r, "pilot")
            row[7] = r * kl_inverse(row[6] / r, row[4])
            best = min(best, row[7])
            log.debug("gaussian bound: %s sigma=%g pilot %.4g -> %.4g", *row[:2], row[6], row[7])
    pilot = tuple(GaussianChoice(*row) for row in scored)
    chosen = min(pilot, key=lambda x: (math.inf if x.pilot_bound is None else x.pilot_bound, x.rhs))

    # final: fresh draws, each model on its own uniform sample of k units
    gen, rng = _streams(seed, 1)

    def units() -> np.ndarray | None:
        return None if k == n else np.sort(rng.choice(n, size=k, replace=False))

    models = (_draw(theta, disp_t, chosen.candidate, chosen.sigma, eps, gen) for _ in range(m))
    mc_error = _mean_error(evaluate, models, units, r, "train")
    mc_rhs = math.log(2.0 / delta_mc) / m
    mc_bound = r * kl_inverse(mc_error / r, mc_rhs)
    bound = r * kl_inverse(mc_bound / r, chosen.rhs)

    warns = [vac_note] if vac_note else []
    if bound >= vac_at:
        warns.append(
            f"vacuous: KL = {chosen.kl:.4g} nats against N = {n:,} (rhs {chosen.rhs:.4g} nats) "
            f"and a posterior train error of at most {mc_bound:.4g} give {bound:.4g} >= "
            f"{vac_at:.4g}"
        )
    assumptions = (
        "training units are i.i.d.; the bound holds with probability >= 1 - delta - delta_mc "
        "over the sample and the Monte Carlo draws",
        "the bound is on the randomised predictor Q (a fresh draw of the trained tensors per "
        "prediction, rounded to the model's dtype), not on the trained model itself",
        "prior centre theta_0 fixed before seeing the data: 0 in the trained coordinates "
        "(dW = 0 for dense updates, a new head's recorded initial value, B = 0, and 0 for "
        "other trained factors whose initial value is not recorded) unless given"
        + (
            f" (given for {len(prior_centre)} tensors: their values before training)"
            if prior_centre
            else ""
        ),
        f"sigma (and lambda) chosen from a grid of {len(grid)} values, candidates {cands}: "
        f"{num_choices} choices paid for by a union bound (+ln({num_choices}) nats)",
        f"Monte Carlo: {m} models, each on {k:,} of the {n:,} training units drawn uniformly "
        "without replacement (each model's mean error is an unbiased draw of the posterior's "
        "train error); sample-convergence bound kl^-1(e_hat, ln(2/delta_mc)/m)",
    )
    if r != 1.0:
        assumptions += (
            f"the {error_name} lies in [0, {r:g}]; the kl bounds are applied to the error "
            "divided by that range and scaled back",
        )
    return GaussianBoundResult(
        bound=bound,
        candidate=chosen.candidate,
        sigma=chosen.sigma,
        prior_sigma=chosen.prior_sigma,
        eps=float(eps),
        kl=chosen.kl,
        num_coordinates=int(disp.size),
        sq_distance=float(np.dot(disp, disp)),
        samples=m,
        examples_per_sample=k,
        mc_error=mc_error,
        mc_rhs=mc_rhs,
        mc_bound=mc_bound,
        rhs=chosen.rhs,
        n_train=n,
        delta=float(delta),
        delta_mc=float(delta_mc),
        num_choices=num_choices,
        seed=seed,
        pilot=pilot,
        pilot_examples=n_pilot,
        pilot_samples=m_pilot,
        vacuous_at=vac_at,
        vacuous=bound >= vac_at,
        chance=chance_level,
        error_name=error_name,
        error_range=r,
        assumptions=assumptions,
        warnings=tuple(warns),
    )


# -- on a checkpoint and its training objective ------------------------------------------------


def gaussian_bound_on(
    checkpoint: Checkpoint,
    train: Objective,
    *,
    n_train: int | None = None,
    num_classes: int | None = None,
    **kwargs,
) -> GaussianBoundResult:
    """The Gaussian bound of ``checkpoint``'s trained tensors, errors measured on ``train``.

    ``train`` must be the objective over the whole training set (its units are the N
    units). Each sampled model is merged into ``train.model`` in place (as the compression
    bound does); the model is restored bit-exactly afterwards, with its modes, flags,
    gradients and the random generators (:func:`genbound.state.preserved`). ``kwargs``: as
    for :func:`gaussian_bound`; ``prior_centre`` defaults to the initial values the
    checkpoint records (:attr:`~genbound.checkpoint.model.Checkpoint.initial`).
    """
    import dataclasses

    from genbound.gap import mean_error
    from genbound.state import preserved
    from genbound.tasks.packing import take_rows
    from genbound.tasks.rebuild import load_updates_into

    rows = [(bi, i) for bi, b in enumerate(train.batches) for i in range(len(b))]
    n = n_train if n_train is not None else len(rows)
    if n != len(rows):
        raise GenboundError(
            f"Gaussian PAC-Bayes bound: N = {n:,} but the training objective has "
            f"{len(rows):,} units; the bound needs the whole training set."
        )

    def evaluate(tensors: Mapping[str, torch.Tensor], units: np.ndarray | None) -> float:
        load_updates_into(train.model, with_trainable_tensors(checkpoint, tensors))
        objective = train
        if units is not None:
            picks = [rows[int(u)] for u in units]
            objective = dataclasses.replace(train, batches=take_rows(train.batches, picks))
        return mean_error(objective)

    metric = train.metric
    kwargs.setdefault("prior_centre", checkpoint.initial)
    with preserved(train.model, parameters=True):
        return gaussian_bound(
            trainable_tensors(checkpoint),
            evaluate,
            n,
            num_classes=num_classes,
            error_range=metric.error_range,
            chance=metric.chance,
            error_name=metric.error_name,
            **kwargs,
        )
