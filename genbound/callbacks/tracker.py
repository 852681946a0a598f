"""``BoundTracker``: genbound's measures of a model while it trains, for any training loop.

Every ``every_n_steps`` optimisation steps the tracker computes the data-free measures of
the checkpoint the model would save at that step (the same computation as ``genbound
report``: :func:`genbound.measures.measure_checkpoint`; each measure says what it logs,
:meth:`genbound.measures.Measure.log_values`), every ``expensive_every_n_steps`` the
data-dependent ones on fixed data. Logged keys (prefix ``genbound/``; dimensionless unless
stated):

* ``mi_bound``, ``occam_bound``: MI and Occam (delta = 0.05) bounds on the 0-1 gap; need N.
* ``theorem1_log10_phi_dW``, ``theorem1_log10_phi_W0``: Theorem 1 correction terms, log10;
  need the base model.
* ``dW_spectral_norm/max``, ``dW_spectral_norm/mean``: ||dW||_2 over the matrix updates.
* ``effective_rank/mean``: effective rank of dW, mean over the matrix updates.
* ``intruders``: intruder dimensions at ``intruder_eps`` summed over layers; need the base
  (its SVD is computed once into the on-disk cache, then read from it).
* ``dist_merged``: sqrt(sum ||dW||_F^2) over the updates, the merged weights' distance
  from their start; ``dist_trained``: ||theta - theta_0|| of the trained tensors whose
  start is known (logged when some is).
* with ``per_layer=True`` also ``dW_spectral_norm/<module>``, ``effective_rank/<module>``,
  ``intruders/<module>``, ``dist_merged/<update>``.
* expensive: ``top_eigenvalue`` (Hessian of the mean loss in the trained parameters, on
  ``hessian_data``; loss units per parameter unit squared), ``gap_loss`` (nats) and
  ``gap_error`` (0-1): test minus train mean on ``gap_data``.
* a causal language model given ``lm_texts=(train, test)`` and its ``tokenizer``: the
  expensive ``gap_loss`` (next-token cross-entropy, nats/token) and ``gap_error`` (top-1
  next-token error), token-weighted over the texts, and ``top_eigenvalue`` of the mean
  token loss on the training texts (unless ``hessian_data`` is given); the MI and Occam
  bounds on the smoothed next-token NLL per text (N counts texts). The token-level
  compression bound needs the whole training set and is left to ``genbound report``.
* user measures (``measures=[...]``, see :mod:`genbound.measures.user`, and those installed
  through the ``genbound.measures`` entry points): ``<name>``, or ``<name>.<key>`` for a
  measure that returns a mapping.

The tracker never changes training: measures run under ``torch.no_grad`` (the Hessian
under its own ``enable_grad``), parameters are never written, and the train/eval mode of
every module, every ``requires_grad`` flag and the torch, CUDA, numpy and Python RNG
states are restored. A measure that cannot be computed (no N, no base) is skipped and
said once through ``logging``; training goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genbound.callbacks.live import (
    Snapshot,
    Trainable,
    live_checkpoint,
    module_of,
    trainable_snapshot,
    write_live_run,
)
from genbound.curvature import top_eigenvalues
from genbound.errors import GenboundError
from genbound.gap import empirical_gap
from genbound.measures import Measures, measure_checkpoint
from genbound.options import ReportOptions
from genbound.parts import DATA_FREE_PARTS
from genbound.spectra import DEFAULT_EPS
from genbound.state import preserved as untouched
from genbound.tasks.metric import Metric
from genbound.tasks.objective import (
    CLASSIFICATION,
    Batch,
    Objective,
    PerExampleLoss,
    cross_entropy_loss,
)

log = logging.getLogger(__name__)

PREFIX = "genbound/"
#: Data as the tracker accepts it: a Batch, a sequence of them, or a mapping of model
#: inputs with a ``"labels"`` entry (as a Hugging Face collator returns).
Data = Batch | Sequence[Batch] | Mapping[str, Any]


@dataclass(frozen=True)
class TrackedStep:
    """What one measurement logged.

    Attributes:
        step: the optimisation step (number of optimizer steps taken).
        values: logged key (with the ``genbound/`` prefix) -> value, float64.
        seconds: wall time of the measurement.
        skipped: measure -> why it was not computed at this step.
    """

    step: int
    values: Mapping[str, float]
    seconds: float
    skipped: Mapping[str, str] = field(default_factory=dict)


def as_batches(data: Data | None) -> tuple[Batch, ...]:
    """``data`` as a tuple of :class:`Batch` (a mapping: its ``"labels"`` are the labels,
    the other entries the model's keyword inputs)."""
    if data is None:
        return ()
    if isinstance(data, Batch):
        return (data,)
    if isinstance(data, Mapping):
        if "labels" not in data:
            raise GenboundError(
                f"tracker data: expected a mapping with a 'labels' entry; found keys {sorted(data)}."
            )
        inputs = {k: v for k, v in data.items() if k != "labels"}
        return (Batch(inputs, torch.as_tensor(data["labels"])),)
    batches = tuple(data)
    if not batches or not all(isinstance(b, Batch) for b in batches):
        raise GenboundError(
            "tracker data: expected a Batch, a non-empty sequence of Batch, or a mapping of "
            f"inputs with 'labels'; found {type(data).__name__}."
        )
    return batches


def measure_values(
    measures: Measures, *, per_layer: bool = False, intruder_eps: float = 0.5
) -> dict[str, float]:
    """The logged values (module docstring) of a report's computed ``measures``: what each
    measure gives (:meth:`genbound.measures.base.Measure.log_values`), with the prefix."""
    out: dict[str, float] = {}
    for m in measures.measures():
        result = measures.result(m.name)
        if result is not None:
            out.update(m.log_values(result, per_layer=per_layer, intruder_eps=intruder_eps))
    return {PREFIX + k: float(v) for k, v in out.items()}


class BoundTracker:
    """Measures a model during training; call :meth:`step` after each optimizer step.

    Args:
        every_n_steps: cheap (data-free) measures every this many steps (None: never).
        expensive_every_n_steps: Hessian and gap every this many steps (None: never, the
            default); needs ``hessian_data`` and/or ``gap_data``.
        n_train: N, the number of training examples (the MI and Occam bounds need it).
            Default: the training set's length, which the framework callbacks read.
        base: the base model folder (default: what the saved adapter names).
        hessian_data: a fixed small batch for the top Hessian eigenvalue: a ``Batch``, a
            sequence of them, or a mapping of model inputs with ``"labels"`` (class
            indices, shape (B,)), on the model's device.
        gap_data: ``(train, test)``, fixed subsets for the empirical gap, each as
            ``hessian_data``.
        loss: per-example loss for the Hessian, ``loss(model, batch) -> (B,)``.
        metric: how the gap scores outputs (:mod:`genbound.tasks.metric`; default:
            classification, cross-entropy and the 0-1 error).
        lm_texts: ``(train, test)`` evaluation texts of a causal language model (each an
            :class:`~genbound.tasks.lm_texts.LMTexts`, or whole texts as strings), used
            instead of ``gap_data``, ``loss`` and ``metric``; needs ``tokenizer``.
        tokenizer: the causal LM's tokenizer (texts are tokenized once, at construction,
            as a Trainer would).
        max_length: tokens per text of ``lm_texts`` (longer texts are cut).
        per_layer: also log per-layer norms, effective ranks and intruders.
        intruder_eps: the intruder threshold logged (one of ``genbound.spectra.DEFAULT_EPS``).
        base_svd: ``"compute"`` (default): the first measurement computes the base
            weights' SVDs into the on-disk cache (seconds for small models); ``"cached"``:
            intruders, base-relative norms and Theorem 1 only where the SVD is cached (run
            ``genbound report`` on the base once), so no measurement ever decomposes W0 --
            the choice for large models.
        run_dir: where :meth:`finish` writes a genbound run (final update, trajectory).
        snapshot_every_n_steps: trajectory snapshots of the trainable parameters every
            this many steps (and at the start and the end); None: none.
        overwrite: replace an existing ``run_dir`` (else refused here, before training).
        seed: seed of the Hessian's Lanczos start vector (a private generator).
        measures: user measures logged with the data-free ones: functions
            ``f(checkpoint)`` returning a float or a mapping of str to float, genbound
            :class:`~genbound.measures.Measure` objects, or ``"MODULE:ATTR"`` names (see
            :mod:`genbound.measures.user`); logged as ``<name>`` or ``<name>.<key>``. One
            that raises is not logged (said once), and the others still are.

    Attributes:
        history: one :class:`TrackedStep` per measurement.
        snapshots: the trajectory snapshots taken so far.
    """

    def __init__(
        self,
        *,
        every_n_steps: int | None = 50,
        expensive_every_n_steps: int | None = None,
        n_train: int | None = None,
        base: str | os.PathLike | None = None,
        hessian_data: Data | None = None,
        gap_data: tuple[Data, Data] | None = None,
        loss: PerExampleLoss = cross_entropy_loss,
        per_layer: bool = False,
        intruder_eps: float = 0.5,
        base_svd: str = "compute",
        run_dir: str | os.PathLike | None = None,
        snapshot_every_n_steps: int | None = None,
        overwrite: bool = False,
        seed: int = 0,
        measures: Sequence[Any] = (),
        metric: Metric | None = None,
        lm_texts: tuple[Any, Any] | None = None,
        tokenizer: Any = None,
        max_length: int = 512,
    ):
        for name, v in (
            ("every_n_steps", every_n_steps),
            ("expensive_every_n_steps", expensive_every_n_steps),
            ("snapshot_every_n_steps", snapshot_every_n_steps),
        ):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise GenboundError(
                    f"BoundTracker: {name} must be None or an int >= 1; found {v!r}."
                )
        self.hessian_batches = as_batches(hessian_data)
        self.gap_batches = tuple(as_batches(d) for d in gap_data) if gap_data else ()
        self.causal_lm = lm_texts is not None
        if self.causal_lm:
            self.gap_batches = _lm_gap_batches(lm_texts, tokenizer, max_length, gap_data, metric)
            self.hessian_batches = self.hessian_batches or self.gap_batches[0]
        if expensive_every_n_steps and not (self.hessian_batches or self.gap_batches):
            raise GenboundError(
                "BoundTracker: expensive_every_n_steps needs hessian_data=... and/or "
                "gap_data=(train, test); found neither."
            )
        if intruder_eps not in DEFAULT_EPS:
            raise GenboundError(
                f"BoundTracker: intruder_eps must be one of {DEFAULT_EPS}; found {intruder_eps!r}."
            )
        if run_dir is not None and Path(run_dir).exists() and not overwrite:
            raise GenboundError(
                f"{run_dir}: already exists; pass overwrite=True to replace it at the end of training."
            )
        if base_svd not in ("compute", "cached"):
            raise GenboundError(
                f"BoundTracker: base_svd must be 'compute' or 'cached'; found {base_svd!r}."
            )
        if n_train is not None and n_train <= 0:
            raise GenboundError(f"BoundTracker: n_train must be > 0; found {n_train!r}.")
        self.every_n_steps = every_n_steps
        self.expensive_every_n_steps = expensive_every_n_steps
        self.n_train = n_train
        self.base = base
        self.loss = loss
        self.per_layer = per_layer
        self.intruder_eps = intruder_eps
        self.base_svd = base_svd
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.overwrite = overwrite
        self.seed = seed
        self.metric = metric if metric is not None else CLASSIFICATION
        self.measure_names = tuple(m for m in measures if isinstance(m, str))
        self.measure_objects = tuple(m for m in measures if not isinstance(m, str))
        ReportOptions(measures=self.measure_names)  # names checked now, not at a step
        self.history: list[TrackedStep] = []
        self.snapshots: list[Snapshot] = []
        self._said: set[str] = set()
        self._last_step: int | None = None

    # -- the loop's entry points ---------------------------------------------------------
    def start(self, model: Trainable, step: int = 0) -> None:
        """Training starts (or resumes) at ``step``: snapshot it if snapshots are on; the
        first measurement follows the next optimizer step."""
        self._last_step = int(step)
        if self.snapshot_every_n_steps:
            self.snapshot(model, step)

    def note_training_set(self, size: int | None) -> None:
        """The framework's training-set length: N when ``n_train`` was not given (a given
        N wins; a different length is said once)."""
        if size is None:
            return
        if self.n_train is None:
            self.n_train = int(size)
        elif self.n_train != size:
            self._say_once(
                "training-set size",
                f"n_train={self.n_train} was given but the training set has {size} examples; "
                f"the bounds use N = {self.n_train}",
            )

    def step(self, model: Trainable, step: int) -> dict[str, float]:
        """Snapshot and measure ``model`` if ``step`` is due; the values logged (empty if none).

        ``model`` is a PEFT model or a genbound :class:`AdapterHandle`; ``step`` counts
        optimizer steps. A second call with the same step does nothing.
        """
        step = int(step)
        if step == self._last_step:
            return {}
        self._last_step = step
        if self._due(self.snapshot_every_n_steps, step):
            self.snapshot(model, step)
        cheap = self._due(self.every_n_steps, step)
        expensive = self._due(self.expensive_every_n_steps, step)
        if not (cheap or expensive):
            return {}
        return dict(self.measure(model, step, cheap=cheap, expensive=expensive).values)

    def measure(
        self, model: Trainable, step: int, *, cheap: bool = True, expensive: bool = False
    ) -> TrackedStep:
        """Measure now, whatever the step; appended to :attr:`history`."""
        start = time.perf_counter()
        values: dict[str, float] = {}
        skipped: dict[str, str] = {}
        module = module_of(model)
        with untouched(module):
            if cheap:
                self._cheap(model, values, skipped)
            if expensive:
                self._expensive(module, values, skipped)
        for part, why in skipped.items():
            self._say_once(part, f"not logged: {why}")
        record = TrackedStep(int(step), values, time.perf_counter() - start, skipped)
        self.history.append(record)
        log.debug("step %d: %d values in %.3f s", step, len(values), record.seconds)
        return record

    def snapshot(self, model: Trainable, step: int) -> None:
        """Record a copy of the trainable parameters at ``step`` (once per step)."""
        if not self.snapshots or self.snapshots[-1][0] != int(step):
            self.snapshots.append((int(step), trainable_snapshot(model)))

    def finish(self, model: Trainable, step: int | None = None) -> Path | None:
        """End of training: a last snapshot at ``step``, then the run folder if ``run_dir``.

        Returns the run folder, or None (no ``run_dir``, or writing failed: logged).
        """
        if self.snapshot_every_n_steps and step is not None:
            self.snapshot(model, step)
        if self.run_dir is None:
            return None
        history = [{"step": r.step, **r.values} for r in self.history]
        try:
            with untouched(module_of(model)):
                return write_live_run(
                    model,
                    self.run_dir,
                    snapshots=self.snapshots,
                    base=self.base,
                    n_train=self.n_train,
                    metrics={"steps": step, "genbound_history": history},
                    overwrite=self.overwrite,
                )
        except GenboundError as exc:
            log.error("genbound: the run folder %s was not written: %s", self.run_dir, exc)
            return None

    # -- the measures ----------------------------------------------------------------------
    def _cheap(self, model: Trainable, values: dict, skipped: dict) -> None:
        try:
            with (
                torch.no_grad(),
                live_checkpoint(model, base=self.base, n_train=self.n_train) as ckpt,
            ):
                lm = {}
                if self.causal_lm:  # the MI bound on the smoothed next-token NLL per text
                    from genbound.tasks.causal_lm import causal_lm_metric

                    lm["mi_loss"] = causal_lm_metric(_vocab_size(module_of(model))).mi_loss()
                measures = measure_checkpoint(
                    ckpt,
                    **lm,
                    n_train=self.n_train,
                    parts=DATA_FREE_PARTS,
                    base_svd=self.base_svd,
                    measures=self.measure_names,
                    extra_measures=self.measure_objects,
                )
        except GenboundError as exc:
            skipped["data-free measures"] = str(exc)
            return
        values.update(
            measure_values(measures, per_layer=self.per_layer, intruder_eps=self.intruder_eps)
        )
        skipped.update(measures.skipped)
        if "mi" in measures.skipped and self.n_train is None:
            skipped["mi"] = (
                "the MI and Occam bounds need N, the number of training examples, which is "
                "unknown (no n_train= given and the training set has no length)"
            )

    def _expensive(self, module: nn.Module, values: dict, skipped: dict) -> None:
        trainable = tuple(n for n, p in module.named_parameters() if p.requires_grad)

        def objective(batches: tuple[Batch, ...], what: str) -> Objective:
            if self.causal_lm:
                from genbound.tasks.causal_lm import lm_objective

                return lm_objective(
                    module, batches, trainable, f"genbound tracker: {what}", _vocab_size(module)
                )
            return Objective(
                module,
                batches,
                self.loss,
                trainable,
                f"genbound tracker: {what}",
                metric=self.metric,
            )

        try:
            if self.hessian_batches:
                eig = top_eigenvalues(
                    objective(self.hessian_batches, "Hessian batch"), seed=self.seed
                )
                values[PREFIX + "top_eigenvalue"] = float(eig.eigenvalues[0])
            if self.gap_batches:
                train, test = self.gap_batches
                gap = empirical_gap(
                    objective(train, "train subset"), objective(test, "test subset")
                )
                values[PREFIX + "gap_loss"] = float(gap.loss_gap)
                values[PREFIX + "gap_error"] = float(gap.error_gap)
        except GenboundError as exc:
            skipped["expensive measures"] = str(exc)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _due(every: int | None, step: int) -> bool:
        return bool(every) and step % every == 0

    def _say_once(self, part: str, why: str) -> None:
        if part not in self._said:
            self._said.add(part)
            log.warning("genbound: %s: %s", part, why)


def _lm_gap_batches(lm_texts, tokenizer, max_length, gap_data, metric):
    """(train, test) language-model batches of ``lm_texts`` (checked against the options
    they replace)."""
    from genbound.tasks.causal_lm import lm_batches

    if gap_data is not None or metric is not None:
        raise GenboundError(
            "BoundTracker: lm_texts replaces gap_data and metric (a causal LM is scored per "
            "token); found both given."
        )
    if tokenizer is None:
        raise GenboundError("BoundTracker: lm_texts needs tokenizer=...; found none.")
    if not (isinstance(lm_texts, tuple | list) and len(lm_texts) == 2):
        raise GenboundError(
            f"BoundTracker: lm_texts must be (train, test) texts; found {type(lm_texts).__name__}."
        )
    return tuple(tuple(lm_batches(tokenizer, texts, max_length)) for texts in lm_texts)


def _vocab_size(module: nn.Module) -> int:
    """V: the rows of the model's output layer."""
    head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise GenboundError(
            f"BoundTracker: lm_texts needs a causal LM with an output layer; found "
            f"{type(module).__name__} without get_output_embeddings()."
        )
    return int(head.weight.shape[0])
