"""Compute every measure of one checkpoint that its data allow, recording what was skipped and why.

Parts (names used by ``--only`` and ``--skip``):

* data-free: ``spectra`` (per-layer spectra and intruders), ``mi`` (MI and Occam bounds,
  on the 0-1 loss unless another is chosen; needs N), ``theorem1`` (the corrected Theorem 1 terms; needs the base);
* with a task: ``gap`` (the empirical gap), ``compression`` (the compression PAC-Bayes
  bound of the quantized trainable tensors on the training set), ``curvature`` (top
  Hessian eigenvalue by Lanczos, the trace by Hutch++ and the spectral density by
  stochastic Lanczos quadrature, on a seeded random sample of the training set stratified
  by label, see :mod:`genbound.tasks.sampling`; by default with
  respect to each adapted layer's merged dW on the directions its adapter reaches, see
  ``CURVATURE_SPACES``) and ``landscape`` (1-D slices along a filter-normalized random
  direction in the adapter's trained factors and along the straight path from the base
  model, same sample).

Curvature and the random slice run on :func:`genbound.tasks.rebuild.adapter_objective`, a
copy of the model with each factored update as an adapter layer, so they move what was
trained; the gap and the compression bound evaluate the merged model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from genbound.bounds import MIBoundResult, Theorem1Result, mi_bound, theorem1_from_checkpoint
from genbound.bounds.compression import CompressionBoundResult
from genbound.bounds.evaluated import compression_bound_on
from genbound.checkpoint.model import Checkpoint
from genbound.curvature import hessian_density, hessian_trace, top_eigenvalues
from genbound.curvature.algorithms import (
    MIN_TRACE_SAMPLES,
    RELIABLE_RELATIVE_STDERR,
    DensityResult,
    EigenResult,
    TraceResult,
)
from genbound.curvature.operator import find_adapted
from genbound.errors import GenboundError
from genbound.gap import GapResult, empirical_gap
from genbound.landscape import Landscape, landscape_1d
from genbound.options import ReportOptions
from genbound.parts import DATA_PARTS, PARTS, check_parts
from genbound.spectra import SpectraResult, analyze_spectra
from genbound.spectra.analyze import Progress
from genbound.tasks.objective import Objective
from genbound.tasks.protocol import Task
from genbound.tasks.rebuild import adapter_objective
from genbound.tasks.sampling import Sample, sample_objective

#: ``stage(name)`` returns a context manager around one stage (the CLI shows a spinner).
Stage = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Measures:
    """The measures of one checkpoint.

    Attributes:
        spectra: per-layer spectra and intruders (None if not requested).
        mi: MI and Occam bounds on the 0-1 loss, or None (see ``skipped``).
        theorem1: the corrected Theorem 1 correction terms, or None.
        gap: the empirical gap (cross-entropy and 0-1 error), or None.
        compression: the compression bound on the test 0-1 error, or None.
        curvature: top eigenvalue and trace of the Hessian on ``curvature_examples``
            training examples, or None.
        landscapes: 1-D slices by direction kind (``"random-filter"``, ``"path"``).
        task: the task's description, or None without data.
        task_reference: the JSON task reference the data came from, if known.
        n_train: N used by the bounds, and ``n_train_source`` where it came from.
        num_labels: number of classes (from the task), for the chance level.
        skipped: part name -> why it was not computed.
        warnings: things a reader must know (e.g. N of the task differs from the run's).
        seconds: wall time per part.
        settings: what the measures were computed with (the parts, the MI loss, the
            curvature space, sample size, product and step budgets, the seed).
    """

    spectra: SpectraResult | None
    mi: MIBoundResult | None = None
    theorem1: Theorem1Result | None = None
    gap: GapResult | None = None
    compression: CompressionBoundResult | None = None
    curvature: Curvature | None = None
    landscapes: dict[str, Landscape] = field(default_factory=dict)
    task: str | None = None
    task_reference: dict[str, Any] | None = None
    n_train: int | None = None
    n_train_source: str | None = None
    num_labels: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Curvature:
    """Hessian of the mean training loss with respect to the updated tensors.

    Attributes:
        top: the top eigenvalue (residual, converged flag, products used).
        trace: the Hutch++ trace with its standard error (``reliable`` says whether it
            resolves the value).
        density: the spectral density by stochastic Lanczos quadrature, with its own trace
            estimate and standard error.
        examples: training examples the loss averages over.
        space: what the Hessian is taken with respect to.
        sample: which examples (a seeded random sample stratified by label), if known.
    """

    top: EigenResult
    trace: TraceResult
    density: DensityResult
    examples: int
    space: str
    sample: Sample | None = None


def base_values(ckpt: Checkpoint, objective: Objective) -> dict[str, torch.Tensor]:
    """W0 of every updated tensor under the objective's parameter names (the start of the
    path from the base model; a new tensor's W0 is its initial value, or zero)."""
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


def no_stage(name: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def measure_checkpoint(
    ckpt: Checkpoint,
    *,
    options: ReportOptions | None = None,
    task: Task | None = None,
    task_reference: dict[str, Any] | None = None,
    n_train: int | None = None,
    parts: Collection[str] = PARTS,
    mi_loss: Mapping[str, Any] | None = None,
    curvature_examples: int = 256,
    trace_products: int = 30,
    density_probes: int = 2,
    density_steps: int = 20,
    landscape_steps: int = 21,
    curvature_space: str = "merged",
    seed: int = 0,
    base_svd: str = "compute",
    progress: Progress | None = None,
    stage: Stage = no_stage,
) -> Measures:
    """Every requested part the checkpoint and ``task`` allow.

    Args:
        ckpt: the checkpoint.
        task: its data (None: only the data-free parts, the rest recorded as skipped).
        task_reference: where ``task`` came from (recorded in the report).
        n_train: N, overriding the checkpoint's; else the checkpoint's, else the task's.
        parts: which parts to compute (see the module docstring).
        mi_loss: the loss of the MI bound, as keywords of :func:`genbound.bounds.mi_bound`
            (default ``{"loss": "zero_one"}``; e.g. ``{"loss": "clipped_ce", "loss_range": 5}``
            or ``{"loss": "smoothed_ce", "smoothing": 0.1}``, K from the task).
        curvature_examples: training examples for curvature and landscapes (a random
            sample stratified by label, drawn with ``seed``; all when there are fewer).
        trace_products: Hessian-vector products of the Hutch++ trace.
        density_probes, density_steps: probes and Lanczos steps of the SLQ density.
        landscape_steps: points of each 1-D landscape (odd).
        curvature_space: what the Hessian is taken with respect to (``CURVATURE_SPACES``):
            ``"merged"`` (default; each adapted layer's dW on the directions its adapter
            reaches, comparable across variants and factorisations), ``"factors"`` (the
            adapter's own trained factors) or ``"tensors"`` (every entry of each updated
            tensor, as if all of it had been trained).
        seed: seeds of the example sample, Lanczos, Hutch++, SLQ and the random direction.
        base_svd: ``"cached"`` computes base-relative spectra and intruders only for layers
            whose W0 SVD is cached (see :func:`genbound.spectra.analyze_spectra`).
        progress: wraps per-layer loops (a progress bar in the CLI).
        stage: wraps each stage (a spinner in the CLI).
        options: all of the above settings at once (they override the keywords).
    """
    if options is not None:
        o = options
        n_train = o.n_train if o.n_train is not None else n_train
        parts, mi_loss, curvature_space = o.parts, o.mi_loss, o.curvature_space
        curvature_examples, trace_products = o.curvature_examples, o.trace_products
        density_probes, density_steps = o.density_probes, o.density_steps
        landscape_steps, seed, base_svd = o.landscape_steps, o.seed, o.base_svd
    wanted = check_parts(parts)
    if curvature_space not in CURVATURE_SPACES:
        raise GenboundError(
            f"curvature_space must be one of {list(CURVATURE_SPACES)}; found {curvature_space!r}."
        )
    settings = {
        "parts": sorted(wanted),
        "mi_loss": dict(mi_loss or {"loss": "zero_one"}),
        "curvature_space": curvature_space,
        "curvature_examples": curvature_examples,
        "trace_products": trace_products,
        "density_probes": density_probes,
        "density_steps": density_steps,
        "landscape_steps": landscape_steps,
        "seed": seed,
        "base_svd": base_svd,
    }
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] = []

    @contextlib.contextmanager
    def timed(part: str, *, shown: bool = True) -> Iterator[None]:
        start = time.perf_counter()
        with stage(part) if shown else contextlib.nullcontext():
            yield
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start

    def attempt(part: str, fn: Callable[[], Any]) -> Any:
        if part not in wanted:
            return None
        with timed(part):
            try:
                return fn()
            except GenboundError as exc:
                skipped[part] = str(exc)
                return None

    n, n_source = _n_train(ckpt, task, n_train)
    spectra = None
    if "spectra" in wanted:
        with timed("spectra", shown=False):  # ``progress`` shows this one
            spectra = analyze_spectra(ckpt, progress=progress, base_svd=base_svd)
    known = None
    if spectra is not None:
        known = {
            x.name: (
                x.base_spectral_norm if x.base_spectral_norm is not None else 0.0,
                x.spectral_norm,
            )
            for x in spectra.layers
            if x.base_spectral_norm is not None or ckpt.updates[x.name].is_new
        }
    missing = [
        u.name
        for u in ckpt.updates.values()
        if u.is_matrix and not u.is_new and (known is None or u.name not in known)
    ]
    if base_svd == "cached" and missing and "theorem1" in wanted and ckpt.base is not None:
        skipped["theorem1"] = (
            f"||W0||_2 of {len(missing)} layer(s) (e.g. {missing[0]}) is not in the base "
            "spectrum cache and base_svd='cached' computes none"
        )
        thm = None
    else:
        thm = attempt("theorem1", lambda: theorem1_from_checkpoint(ckpt, known=known))

    gap = compression = curvature = None
    landscapes: dict[str, Landscape] = {}
    if task is None:
        for part in DATA_PARTS:
            if part in wanted:
                skipped[part] = (
                    "no data: pass --data TRAIN TEST (with --text-column and --label-column) "
                    "or --task module:function"
                )
    elif wanted & set(DATA_PARTS):
        with timed("model"):
            train, test = task.objectives(ckpt)
        if n is not None and train.num_examples != n:
            warnings.append(
                f"the task's training set has {train.num_examples:,} examples but N = {n:,} "
                f"({n_source}); the compression bound uses the task's {train.num_examples:,} "
                "and holds only if they are the run's whole training set"
            )
        gap = attempt("gap", lambda: empirical_gap(train, test))
        compression = attempt(
            "compression",
            lambda: compression_bound_on(ckpt, train, num_classes=task.num_labels),
        )
        sub = adapted = sample = None
        if wanted & {"curvature", "landscape"}:  # the sample costs a hash of every example
            sub, sample = sample_objective(train, curvature_examples, seed=seed)
            adapted, notes = adapter_objective(sub, ckpt)
            warnings.extend(notes)
        curvature = attempt(
            "curvature",
            lambda: _curvature(
                sub if curvature_space == "tensors" else adapted,
                curvature_space,
                seed,
                trace_products,
                density_probes,
                density_steps,
                sample,
            ),
        )
        if curvature is not None and not curvature.trace.reliable:
            warnings.append(
                f"the Hessian trace is not resolved: {trace_summary(curvature)}. Take more "
                "products (--trace-products) before reading it"
            )
        # the random slice moves what was trained (the adapter's factors); the path
        # W0 + t dW is one line in weight space whatever the factorisation
        landscapes = (
            attempt(
                "landscape",
                lambda: {
                    "random-filter": landscape_1d(
                        adapted, kind="random", steps=landscape_steps, seed=seed
                    ),
                    "path": landscape_1d(
                        sub, kind="path", base=base_values(ckpt, sub), steps=landscape_steps
                    ),
                },
            )
            or {}
        )
    mi_args = dict(mi_loss or {"loss": "zero_one"})
    if mi_args.get("loss") == "smoothed_ce" and task is not None:
        mi_args.setdefault("num_classes", task.num_labels)
    if mi_args.get("loss") == "clipped_ce" and gap is not None:
        # the raw cross-entropies seen, against the clip level (a warning if above it)
        mi_args["observed_losses"] = [gap.train.max_loss, gap.test.max_loss]
    mi = attempt("mi", lambda: mi_bound(ckpt, n_train=n, **mi_args))
    return Measures(
        spectra=spectra,
        mi=mi,
        theorem1=thm,
        gap=gap,
        compression=compression,
        curvature=curvature,
        landscapes=landscapes,
        task=task.description if task is not None else None,
        task_reference=task_reference,
        n_train=n,
        n_train_source=n_source,
        num_labels=task.num_labels if task is not None else None,
        skipped=skipped,
        warnings=tuple(warnings),
        seconds=seconds,
        settings=settings,
    )


def _n_train(
    ckpt: Checkpoint, task: Task | None, given: int | None
) -> tuple[int | None, str | None]:
    """N and where it came from: given, else the checkpoint's record, else the task's data."""
    if given is not None:
        return int(given), "given"
    if ckpt.n_train is not None:
        return int(ckpt.n_train), "checkpoint"
    if task is not None:
        return int(task.n_train), "task's training set"
    return None, None


#: What a report's Hessian is taken with respect to, by ``curvature_space``.
CURVATURE_SPACES = {
    "merged": "the merged update dW of each adapted layer, on the directions its adapter "
    "reaches (invariant to how dW is factored; DoRA: its magnitudes and the directions its "
    "low-rank part reaches); other trained tensors in their own coordinates",
    "factors": "the adapter's trained factors (B, A; DoRA also its magnitudes), as trained; "
    "other trained tensors in their own coordinates",
    "tensors": "every entry of the updated tensors (merged model)",
}


def trace_summary(cv: Curvature) -> str:
    """Both trace estimates with their standard errors, each said to resolve the value or
    not (see :func:`genbound.curvature.algorithms.resolves`)."""
    t, d = cv.trace, cv.density

    def verdict(ok: bool, samples: int) -> str:
        if ok:
            return "resolved"
        if samples < MIN_TRACE_SAMPLES:
            return f"not resolved: {samples} random samples, fewer than {MIN_TRACE_SAMPLES}"
        return f"not resolved: standard error above {RELIABLE_RELATIVE_STDERR:.0%} of the value"

    hutch = f"Hutch++ {t.trace:.4g} ± {t.stderr:.2g} ({t.num_products} products; "
    hutch += f"{verdict(t.reliable, t.samples.size)})"
    if not math.isfinite(d.trace_stderr):
        return f"{hutch}; SLQ {d.trace:.4g} (one probe: no standard error)"
    probes = d.trace_samples.size
    slq = f"SLQ {d.trace:.4g} ± {d.trace_stderr:.2g} ({probes} probes; "
    return f"{hutch}; {slq}{verdict(d.trace_reliable, probes)})"


def _curvature(
    objective: Objective,
    space: str,
    seed: int,
    trace_products: int,
    probes: int,
    steps: int,
    sample: Sample | None = None,
) -> Curvature:
    """Top eigenvalue, trace and density in ``space`` (full fine-tuning: its tensors)."""
    parameterization = "merged" if space == "merged" else "factors"
    if space == "merged" and not find_adapted(objective.model, objective.trainable)[0]:
        parameterization, space = "factors", "tensors"  # no adapter layer: nothing to merge
    kw = dict(parameterization=parameterization, seed=seed)
    top = top_eigenvalues(objective, k=1, **kw)
    trace = hessian_trace(objective, num_products=trace_products, **kw)
    density = hessian_density(objective, num_probes=probes, num_steps=steps, **kw)
    space = CURVATURE_SPACES[space]
    top = dataclasses.replace(top, parameterization=space)
    trace = dataclasses.replace(trace, parameterization=space)
    density = dataclasses.replace(density, parameterization=space)
    return Curvature(top, trace, density, objective.num_examples, space, sample)
