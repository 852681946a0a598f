"""The demo's sweep: adapter variants of MiniLM's top layers trained on cached hidden states.

Every variant adapts the linear layers of the top encoder layers (query, key, value,
attention output, intermediate and output projections) and trains the classifier head;
the frozen lower layers run once per split and their outputs are shared by every run.
One run is one unit of work (:class:`TrainJob`): plain JSON in, a run folder out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from genbound.adapters import apply
from genbound.datasets import minilm_path
from genbound.demo.data import task_reference, tweets_task
from genbound.options import ReportOptions
from genbound.qat import quantization_aware_fit
from genbound.tasks.hf_text import EncoderSuffix
from genbound.train import fit

log = logging.getLogger(__name__)

#: How a demo run names its base model, so the run stays readable on another machine.
BASE_MODEL_PYTHON = "genbound.datasets:minilm_path"


@dataclass(frozen=True)
class VariantSpec:
    """One run of the sweep.

    Attributes:
        name: the run folder's name.
        method: a registry name (``genbound.adapters.variants()``).
        rank: r (None for ``fft`` and ``head``); alpha = 2 r (scale 2) for low-rank methods.
        chain: k for chained methods.
        lr: peak AdamW learning rate.
        epochs: passes over the training set (None: the config's).
        subspace: d of a subspace run (``apply(..., subspace=d)``: only z trains), or None.
        qat_bits: b of a quantization-aware fine-tuning of z after training
            (:func:`genbound.qat.quantization_aware_fit`), or None. A chained run is
            trained quantization-aware throughout (its finished links cannot be tuned).
        qat_epochs: passes over the training set of that fine-tuning (0: none).
    """

    name: str
    method: str
    rank: int | None = 8
    chain: int = 1
    lr: float = 4e-3
    epochs: int | None = None
    subspace: int | None = None
    qat_bits: int | None = None
    qat_epochs: int = 1


@dataclass(frozen=True)
class DemoConfig:
    """Data and training settings shared by every run of the sweep.

    Attributes:
        n_train, n_test: tweets in the training and test sets (disjoint, random by ``seed``).
        epochs: passes over the training set; batches of ``batch_size`` similar-length texts.
        layers: the adapted encoder layers (the ones below are frozen and cached).
        seed: data split, head initialisation, adapter initialisation and shuffling.
        curvature_examples, trace_products, density_probes, density_steps, landscape_steps:
            the reports' Hessian and landscape settings (see
            :class:`genbound.options.ReportOptions`).
    """

    n_train: int = 6000
    n_test: int = 2000
    epochs: int = 1
    batch_size: int = 64
    layers: tuple[int, ...] = (4, 5)
    seed: int = 0
    max_length: int = 64
    curvature_examples: int = 32
    trace_products: int = 10
    density_probes: int = 1
    density_steps: int = 20
    landscape_steps: int = 21
    variants: tuple[VariantSpec, ...] = field(default=())

    def task_kwargs(self) -> dict:
        return {
            "n_train": self.n_train,
            "n_test": self.n_test,
            "seed": self.seed,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }

    def report_options(self) -> ReportOptions:
        """The reports' settings; the same as
        ``genbound report RUN --curvature-examples ... --seed ...``."""
        return ReportOptions(
            curvature_examples=self.curvature_examples,
            trace_products=self.trace_products,
            density_probes=self.density_probes,
            density_steps=self.density_steps,
            landscape_steps=self.landscape_steps,
            seed=self.seed,
        )


DEFAULT_VARIANTS = (
    VariantSpec("head", "head", rank=None, lr=5e-3, epochs=8),  # cheap: the top is cached
    VariantSpec("lora", "lora", lr=2e-3),
    VariantSpec("asym", "asym"),
    VariantSpec("cla", "cla"),
    VariantSpec("c3la", "c3la", chain=2),
    VariantSpec("cola", "cola", chain=2, lr=2e-3),
    VariantSpec("fft", "fft", rank=None, lr=1e-4),
    # certificates: only z (d coordinates, adapter factors and head together) trains, then
    # z is fine-tuned on a 2^b-level codebook; a chain trains on its codebook throughout
    VariantSpec("lora_sub", "lora", lr=0.1, epochs=2, subspace=500, qat_bits=2),
    VariantSpec("asym_sub", "asym", lr=0.3, epochs=2, subspace=500, qat_bits=2),
    VariantSpec("cla_sub", "cla", lr=0.1, epochs=2, subspace=500, qat_bits=2),
    VariantSpec(
        "c3la_sub", "c3la", chain=2, lr=0.1, epochs=2, subspace=250, qat_bits=1, qat_epochs=0
    ),
)
EXTRA_VARIANTS = (
    VariantSpec("lora_plus", "lora_plus", lr=1e-3),
    VariantSpec("rac", "rac", chain=2, lr=2e-3),
    VariantSpec("random_cla", "random_cla"),
    VariantSpec("random_c3la", "random_c3la", chain=2),
    VariantSpec("paca", "paca", lr=2e-3),
)
DEFAULT = DemoConfig(variants=DEFAULT_VARIANTS)
ALL = DemoConfig(variants=DEFAULT_VARIANTS + EXTRA_VARIANTS)
FAST = DemoConfig(
    n_train=160,
    n_test=96,
    epochs=1,
    batch_size=32,
    layers=(5,),
    curvature_examples=16,
    variants=(
        VariantSpec("head", "head", rank=None, lr=5e-3, epochs=2),
        VariantSpec("lora", "lora", rank=2, lr=2e-3),
        VariantSpec("cla", "cla", rank=2),
        VariantSpec("lora_sub", "lora", rank=2, lr=0.1, subspace=40, qat_bits=2),
    ),
)


def _targets(layers: tuple[int, ...]) -> list[str]:
    ids = "|".join(str(i) for i in layers)
    return [rf".*encoder\.layer\.({ids})\..*"]


@dataclass(frozen=True)
class TrainJob:
    """Train one variant and write its run folder (JSON-serializable: hand it to any worker)."""

    spec: VariantSpec
    config: DemoConfig
    run_dir: str

    def to_json(self) -> dict:
        return asdict(self)


def train_variant(job: TrainJob) -> Path:
    """Train ``job.spec`` on the demo task and write a genbound run folder; returns its path.

    The global RNG state is left as it was.
    """
    spec, cfg = job.spec, job.config
    start_time = time.perf_counter()
    task = tweets_task(**cfg.task_kwargs())
    base = minilm_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the fresh head's initialisation
        model = task.build_model(None)
    top = len(model.base_model.encoder.layer)
    start = top if spec.method == "head" else min(cfg.layers)  # a head needs only the top
    for data in (task.train, task.test):  # one pass for every run and report of the sweep
        task.cached_batches(model, data, min(cfg.layers), base, also=(top,))
    train_batches = task.cached_batches(model, task.train, start, base)
    handle = apply(
        model,
        spec.method,
        rank=spec.rank,
        alpha=2 * spec.rank if spec.rank else None,
        targets=_targets(cfg.layers),
        chain=spec.chain,
        seed=cfg.seed,
        head=["classifier"],
        subspace=spec.subspace,
    )
    suffix = EncoderSuffix(model, start)
    common = {
        "forward": lambda _model, batch: suffix(**batch.inputs),
        "seed": cfg.seed,
        "eval_train": False,
    }
    epochs = spec.epochs or cfg.epochs
    if spec.qat_bits is not None and spec.chain > 1:  # a finished link cannot be fine-tuned
        result = quantization_aware_fit(
            handle, train_batches, bits=spec.qat_bits, epochs=epochs, lr=spec.lr, **common
        )
    else:
        result = fit(handle, train_batches, None, epochs=epochs, lr=spec.lr, **common)
    metrics = result.metrics()
    if spec.qat_bits is not None and spec.qat_epochs > 0:
        qat = quantization_aware_fit(
            handle, train_batches, bits=spec.qat_bits, epochs=spec.qat_epochs, **common
        )
        metrics |= {"qat_steps": qat.steps, "qat_history": qat.history}
    metrics["train_seconds"] = time.perf_counter() - start_time
    path = handle.save(
        job.run_dir,
        base_model={"path": str(base), "python": BASE_MODEL_PYTHON},
        data=task_reference(**cfg.task_kwargs()),
        n_train=cfg.n_train,
        metrics=metrics,
        overwrite=True,
    )
    log.info("%s trained in %.1f s -> %s", spec.name, metrics["train_seconds"], path)
    return path
