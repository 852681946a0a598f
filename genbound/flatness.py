"""Flatness and sharpness by bisection (Jiang et al. 2020, "Fantastic generalization
measures and where to find them", arXiv 1912.02178, sharpness-based measures; reference
code nitarshan/robust-generalization-measures, ``_pacbayes_sigma``).

For a model with tensors w (name -> float64 tensor; D scalars in all) and its mean train
error e(w) on a fixed sample of training examples, each search finds the largest scale at
which a perturbation raises the error by ``target``:

* ``gaussian``: w + u, u_i ~ N(0, sigma^2) (variance sigma^2); the scale is sigma;
* ``gaussian_magnitude``: u_i ~ N(0, sigma^2 w_i^2 + eps^2) (magnitude-aware);
* ``adversarial``: u in the l_inf box |u_i| <= alpha, found by projected-gradient ascent
  on the mean train loss from a random start in the box; the scale is alpha;
* ``adversarial_magnitude``: the box |u_i| <= alpha |w_i| + eps.

The rise at scale s is mean_j e(w + u_j(s)) - e(w) over ``samples`` draws (noise draws;
random starts for the adversarial kinds). The draws are common random numbers: draw j is
the same standard-normal (Gaussian) or uniform [-1, 1] (adversarial start) tensor at every
scale, multiplied by the scale's standard deviation or box radius, so the rise is a
deterministic function of s. Projected-gradient ascent: ``ascent_steps`` steps
u <- clip(u + (2.5 / steps) r * sign(grad), -r, r), r the box radius (Madry et al. 2018's
step size), then the error at w + u.

Bisection (as Jiang et al.'s code, but geometric): the first step evaluates the rise at
``lower`` and ends the search when it already exceeds the target (as the magnitude-aware
forms' floor eps alone can on a large model); then the bracket is [``lower``, ``upper``]
and each step evaluates the rise at s = sqrt(lo hi) and stops when
|rise - target| <= ``tolerance`` (converged); otherwise s becomes ``hi`` when the rise
exceeds the target and ``lo`` when it does not, for at most ``depth`` steps in all. Jiang et al.
bisect arithmetically over [0, 2] with 15 steps and 10 samples and compare
|accuracy drop| with the target; here the rise is signed and the bracket spans decades,
since merged weights, trained factors and adversarial radii have scales far below 2.

Measures (Jiang et al., m the training set's size, w0 the reference, omega = D):

* flatness 1/sigma^2 and sharpness 1/alpha^2 (larger: sharper);
* PAC-Bayes: ||w - w0||^2 / (4 sigma^2) + ln(m / sigma) + 10;
* magnitude-aware PAC-Bayes (their code): 1/4 sum_i ln[(eps^2 + (sigma'^2 + 1)
  ||w - w0||^2 / omega) / (eps^2 + sigma'^2 (w_i - w0_i)^2)] + ln(m / sigma') + 10,
  sigma' from the magnitude-aware search.

Their code passes sigma^2 (and sigma^2 |w|^2 + eps^2) to ``torch.normal`` as the standard
deviation; here they are variances, as the paper defines them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from genbound.errors import GenboundError

__all__ = [
    "KINDS",
    "Bracket",
    "Evaluation",
    "Rise",
    "Search",
    "SearchSettings",
    "bisect",
    "pacbayes_expression",
    "pacbayes_magnitude_expression",
    "rise_curve",
    "search",
]

#: The four searches: (noise or adversarial) x (plain or magnitude-aware).
KINDS = ("gaussian", "gaussian_magnitude", "adversarial", "adversarial_magnitude")

#: ``evaluate(tensors) -> mean train error`` of the model with its tensors replaced by
#: ``tensors`` (name -> float64 tensor, the names and shapes of the searched tensors).
Evaluate = Callable[[Mapping[str, torch.Tensor]], float]
#: ``gradient(tensors) -> gradient of the mean train loss`` at ``tensors`` (same names and
#: shapes).
Gradient = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs.

    Attributes:
        target: the train error rise sought (units of the error: 0.1 = ten points of 0-1
            error).
        tolerance: the search stops when the rise is within this of ``target``.
        depth: at most this many bisection steps (one rise evaluation each).
        samples: draws per evaluation (noise draws; random starts for the adversarial).
        lower, upper: the initial bracket of the scale (sigma or alpha), 0 < lower < upper.
        eps: the magnitude-aware forms' floor (standard deviation or radius).
        ascent_steps: projected-gradient steps of the adversarial searches.
        seed: seeds the draws.
    """

    target: float = 0.1
    tolerance: float = 0.01
    depth: int = 12
    samples: int = 5
    lower: float = 1e-6
    upper: float = 10.0
    eps: float = 1e-3
    ascent_steps: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise GenboundError(
                    f"flatness search: {key} must be {expected}; found {getattr(self, key)!r}."
                )

        for key in ("depth", "samples", "ascent_steps"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "an integer >= 1")
        need(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0")
        for key in ("target", "lower", "upper", "eps"):
            v = getattr(self, key)
            need(math.isfinite(v) and v > 0, key, "a finite number > 0")
        need(0 <= self.tolerance < self.target, "tolerance", "in [0, target)")
        need(self.lower < self.upper, "upper", f"above lower = {self.lower!r}")

    @property
    def step_size(self) -> float:
        """The ascent's step, as a fraction of the box radius: 2.5 / ascent_steps."""
        return 2.5 / self.ascent_steps


@dataclass(frozen=True)
class Rise:
    """The error rise at one scale.

    Attributes:
        mean: mean over the draws of e(w + u_j) - e(w).
        stderr: its Monte Carlo standard error (std over draws / sqrt(draws), ddof 1);
            NaN with one draw.
        errors: e(w + u_j) of each draw.
    """

    mean: float
    stderr: float
    errors: tuple[float, ...]


@dataclass(frozen=True)
class Evaluation:
    """One bisection step: the scale and the rise there."""

    scale: float
    rise: float
    rise_stderr: float


@dataclass(frozen=True)
class Search:
    """One search's outcome.

    Attributes:
        kind: one of :data:`KINDS`.
        scale: sigma (Gaussian) or alpha (adversarial): the last scale evaluated (within
            the tolerance of the target when ``converged``).
        lower, upper: the final bracket (the scale lies in it).
        rise, rise_stderr: the rise at ``scale`` and its Monte Carlo standard error.
        converged: |rise - target| <= tolerance at ``scale``.
        bracketed: a scale below and one above the target were both evaluated.
        base_error: e(w), the unperturbed model's error on the sample.
        inverse_square: 1 / scale^2: flatness (Gaussian) or sharpness (adversarial); larger
            is sharper.
        evaluations: every step, in order.
        settings: how it ran.
        seconds: its wall time.
    """

    kind: str
    scale: float
    lower: float
    upper: float
    rise: float
    rise_stderr: float
    converged: bool
    bracketed: bool
    base_error: float
    inverse_square: float
    evaluations: tuple[Evaluation, ...]
    settings: SearchSettings
    seconds: float = math.nan

    @property
    def outcome(self) -> str:
        """How it ended, in words."""
        if self.converged:
            return "converged"
        if self.upper == self.scale and self.lower == self.settings.lower:
            return "above the target at every scale tried, down to the lower end"
        if self.lower == self.scale and self.upper == self.settings.upper:
            return "below the target at every scale tried, up to the upper end"
        return f"no scale within the tolerance after {len(self.evaluations)} steps"


# -- the rise as a function of the scale ---------------------------------------------------


def _generator(seed: int, stream: int, draw: int) -> torch.Generator:
    """The generator of draw ``draw`` of a stream (0: Gaussian noise, 1: adversarial starts)."""
    state = np.random.SeedSequence([seed, stream, draw]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def _draw(tensors: Mapping[str, torch.Tensor], seed: int, stream: int, draw: int):
    """Draw ``draw``: standard normal (stream 0) or uniform [-1, 1] (stream 1) tensors."""
    gen = _generator(seed, stream, draw)
    out = {}
    for name, t in tensors.items():
        if stream == 0:
            out[name] = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        else:
            out[name] = torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0
    return out


def _error(evaluate: Evaluate, tensors: Mapping[str, torch.Tensor]) -> float:
    e = float(evaluate(tensors))
    if not math.isfinite(e):
        raise GenboundError(f"flatness search: the train error must be finite; found {e!r}.")
    return e


def _ascend(
    tensors: Mapping[str, torch.Tensor],
    radius: Mapping[str, torch.Tensor | float],
    start: Mapping[str, torch.Tensor],
    gradient: Gradient,
    steps: int,
    step: float,
) -> dict[str, torch.Tensor]:
    """w + u after ``steps`` projected sign-gradient steps from u = radius * start."""
    u = {n: radius[n] * start[n] for n in tensors}
    for _ in range(steps):
        g = gradient({n: tensors[n] + u[n] for n in tensors})
        for n in tensors:
            r = radius[n]
            moved = u[n] + step * r * torch.sign(g[n].to(torch.float64))
            u[n] = torch.clamp(moved, -r, r)
    return {n: tensors[n] + u[n] for n in tensors}


def rise_curve(
    kind: str,
    tensors: Mapping[str, torch.Tensor],
    evaluate: Evaluate,
    gradient: Gradient | None = None,
    *,
    settings: SearchSettings,
    base_error: float | None = None,
) -> Callable[[float], Rise]:
    """``rise(scale)``: the error rise of ``kind`` at a scale, with the same draws at every
    scale (see the module docstring). ``gradient`` is needed by the adversarial kinds;
    ``base_error`` defaults to ``evaluate(tensors)``."""
    if kind not in KINDS:
        raise GenboundError(f"flatness search: kind must be one of {list(KINDS)}; found {kind!r}.")
    adversarial = kind.startswith("adversarial")
    if adversarial and gradient is None:
        raise GenboundError(f"flatness search: {kind!r} needs the train loss's gradient.")
    w = {n: torch.as_tensor(t).detach().to(torch.float64) for n, t in tensors.items()}
    if not w:
        raise GenboundError("flatness search: expected tensors to perturb; found none.")
    s = settings
    base = _error(evaluate, w) if base_error is None else float(base_error)
    magnitude = {n: t.abs() for n, t in w.items()}

    def spread(scale: float) -> dict[str, torch.Tensor | float]:
        """Standard deviation (Gaussian) or box radius (adversarial) per coordinate."""
        if kind == "gaussian_magnitude":
            return {
                n: torch.sqrt(scale * scale * a * a + s.eps * s.eps) for n, a in magnitude.items()
            }
        if kind == "adversarial_magnitude":
            return {n: scale * a + s.eps for n, a in magnitude.items()}
        return dict.fromkeys(w, float(scale))

    def rise(scale: float) -> Rise:
        r = spread(float(scale))
        errors = []
        for j in range(s.samples):  # redrawn from its seed each time: no copies held
            d = _draw(w, s.seed, int(adversarial), j)
            if adversarial:
                moved = _ascend(w, r, d, gradient, s.ascent_steps, s.step_size)
            else:
                moved = {n: w[n] + r[n] * d[n] for n in w}
            errors.append(_error(evaluate, moved))
        rises = np.asarray(errors) - base
        stderr = float(rises.std(ddof=1) / math.sqrt(rises.size)) if rises.size > 1 else math.nan
        return Rise(float(rises.mean()), stderr, tuple(errors))

    return rise


# -- bisection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bracket:
    """Where a bisection stopped.

    Attributes:
        scale: the last scale evaluated.
        lower, upper: the final bracket.
        rise: the rise at ``scale``.
        converged: |rise - target| <= tolerance there.
        bracketed: a scale below and one above the target were both evaluated.
        evaluations: every step, in order.
    """

    scale: float
    lower: float
    upper: float
    rise: Rise
    converged: bool
    bracketed: bool
    evaluations: tuple[Evaluation, ...]


def bisect(rise: Callable[[float], Rise], settings: SearchSettings) -> Bracket:
    """Geometric bisection of ``rise`` for the target (see the module docstring)."""
    s = settings
    lo, hi = s.lower, s.upper
    steps: list[Evaluation] = []
    below = above = converged = False
    for step in range(s.depth):
        scale = s.lower if step == 0 else math.sqrt(lo * hi)
        found = rise(scale)
        steps.append(Evaluation(scale, found.mean, found.stderr))
        if abs(found.mean - s.target) <= s.tolerance:
            converged = True
            break
        if found.mean > s.target:
            hi, above = scale, True
            if step == 0:  # above the target at the lower end: nothing to bisect
                break
        else:
            lo, below = scale, True
    return Bracket(scale, lo, hi, found, converged, below and above, tuple(steps))


def search(
    kind: str,
    tensors: Mapping[str, torch.Tensor],
    evaluate: Evaluate,
    gradient: Gradient | None = None,
    *,
    settings: SearchSettings | None = None,
    base_error: float | None = None,
) -> Search:
    """The largest scale of ``kind`` at which the error rises by the target (see the
    module docstring); ``base_error`` defaults to ``evaluate(tensors)``."""
    start = time.perf_counter()
    s = settings or SearchSettings()
    if base_error is None:
        w = {n: torch.as_tensor(t).detach().to(torch.float64) for n, t in tensors.items()}
        base_error = _error(evaluate, w)
    curve = rise_curve(kind, tensors, evaluate, gradient, settings=s, base_error=base_error)
    b = bisect(curve, s)
    return Search(
        kind=kind,
        scale=b.scale,
        lower=b.lower,
        upper=b.upper,
        rise=b.rise.mean,
        rise_stderr=b.rise.stderr,
        converged=b.converged,
        bracketed=b.bracketed,
        base_error=float(base_error),
        inverse_square=1.0 / (b.scale * b.scale),
        evaluations=b.evaluations,
        settings=s,
        seconds=time.perf_counter() - start,
    )


# -- the PAC-Bayes expressions ---------------------------------------------------------------


def _check_expression(sigma: float, m: int) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise GenboundError(f"PAC-Bayes expression: sigma must be > 0; found {sigma!r}.")
    if not (isinstance(m, int | np.integer) and m >= 1):
        raise GenboundError(f"PAC-Bayes expression: m must be an integer >= 1; found {m!r}.")


def pacbayes_expression(sq_distance: float, sigma: float, m: int) -> float:
    """||w - w0||^2 / (4 sigma^2) + ln(m / sigma) + 10 (Jiang et al.'s PAC-Bayes measure;
    ``sq_distance`` = ||w - w0||^2)."""
    _check_expression(sigma, m)
    return float(sq_distance) / (4.0 * sigma * sigma) + math.log(m / sigma) + 10.0


def pacbayes_magnitude_expression(
    displacement: np.ndarray, sigma: float, m: int, eps: float = 1e-3
) -> float:
    """Jiang et al.'s magnitude-aware PAC-Bayes measure (their code), with
    ``displacement`` = w - w0 (any shape; omega = its size) and sigma' = ``sigma``:
    1/4 sum_i ln[(eps^2 + (sigma^2 + 1) ||w - w0||^2 / omega) / (eps^2 + sigma^2
    (w_i - w0_i)^2)] + ln(m / sigma) + 10."""
    _check_expression(sigma, m)
    d = np.asarray(displacement, dtype=np.float64).reshape(-1)
    if d.size == 0:
        raise GenboundError("PAC-Bayes expression: expected a non-empty displacement.")
    e2, s2 = eps * eps, sigma * sigma
    numerator = e2 + (s2 + 1.0) * float(np.dot(d, d)) / d.size
    terms = np.log(numerator) - np.log(e2 + s2 * d * d)
    return 0.25 * float(terms.sum()) + math.log(m / sigma) + 10.0
