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
        n_train: training tweets of this run (None: the config's); with the config's
            ``test_first`` the runs' training sets are nested and share one test set.
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
    n_train: int | None = None


@dataclass(frozen=True)
class DemoConfig:
    """Data and training settings shared by every run of the sweep.

    Attributes:
        n_train, n_test: tweets in the training and test sets (disjoint, random by ``seed``);
            a run may set its own ``n_train``.
        test_first: draw the test set first (:func:`genbound.demo.data.tweets_split`), so
            runs of different ``n_train`` share it.
        epochs: passes over the training set; batches of ``batch_size`` similar-length texts.
        layers: the adapted encoder layers (the ones below are frozen and cached).
        seed: data split, head initialisation, adapter initialisation and shuffling.
        curvature_examples, trace_products, density_probes, density_steps, landscape_steps,
        pacbayes_samples, sharpness_examples, sharpness_samples, sharpness_ascent_steps,
        sharpness_spaces: the reports' Hessian,
            landscape, Gaussian-certificate and sharpness settings (see
            :class:`genbound.options.ReportOptions`).
    """

    n_train: int = 6000
    n_test: int = 2000
    test_first: bool = False
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
    pacbayes_samples: int = 100
    sharpness_examples: int = 512
    sharpness_samples: int = 5
    sharpness_ascent_steps: int = 3
    sharpness_spaces: tuple[str, ...] = ("merged", "trained")
    variants: tuple[VariantSpec, ...] = field(default=())

    def task_kwargs(self, spec: VariantSpec | None = None) -> dict:
        """Keywords of :func:`genbound.demo.data.tweets_task` for ``spec``'s run."""
        n_train = spec.n_train if spec is not None and spec.n_train else self.n_train
        kwargs = {
            "n_train": n_train,
            "n_test": self.n_test,
            "seed": self.seed,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }
        if self.test_first:  # absent otherwise: older run folders keep their references
            kwargs["test_first"] = True
        return kwargs

    def report_options(self) -> ReportOptions:
        """The reports' settings; the same as
        ``genbound report RUN --curvature-examples ... --seed ...``."""
        return ReportOptions(
            curvature_examples=self.curvature_examples,
            trace_products=self.trace_products,
            density_probes=self.density_probes,
            density_steps=self.density_steps,
            landscape_steps=self.landscape_steps,
            pacbayes_samples=self.pacbayes_samples,
            sharpness_examples=self.sharpness_examples,
            sharpness_samples=self.sharpness_samples,
            sharpness_ascent_steps=self.sharpness_ascent_steps,
            sharpness_spaces=self.sharpness_spaces,
            seed=self.seed,
        )


#: The grid's learning rate, one for every variant (alpha = 2 r), so that runs of two
#: variants differ in the variant alone and a sweep can compare them pair by pair.
GRID_LR = 3e-3


def grid(
    methods: tuple[str, ...],
    ranks: tuple[int, ...],
    n_trains: tuple[int, ...],
    epochs: tuple[int, ...],
) -> tuple[VariantSpec, ...]:
    """Every combination, named ``<method>_r<rank>_n<n_train>_e<epochs>``; chained methods
    use two links."""
    return tuple(
        VariantSpec(
            f"{m}_r{r}_n{n}_e{e}",
            m,
            rank=r,
            chain=2 if m == "c3la" else 1,
            lr=GRID_LR,
            epochs=e,
            n_train=n,
        )
        for m in methods
        for r in ranks
        for n in n_trains
        for e in epochs
    )


def subspace_runs(methods: tuple[str, ...], n_train: int, d: int = 500) -> tuple[VariantSpec, ...]:
    """Runs that train only z (d coordinates of the adapter factors and head together), then
    fine-tune z on a 4-level codebook: their compression bounds can be non-vacuous."""
    return tuple(
        VariantSpec(
            f"{m}_sub_n{n_train}", m, lr=0.1, epochs=2, subspace=d, qat_bits=2, n_train=n_train
        )
        for m in methods
    )


#: The default sweep: what drives the gap (training-set size, epochs, rank) varies as well as
#: the variant, 2 x 2 x 2 x 2 runs on the top layer, plus two subspace runs.
GRID = grid(("lora", "cla"), (2, 8), (500, 2000), (1, 8))
#: ``--study``: four variants, three training-set sizes (48 runs), and subspace runs.
STUDY_GRID = grid(("lora", "asym", "cla", "c3la"), (2, 8), (500, 1000, 2000), (1, 8))

#: One run per variant at one setting (``--all``): the variants compared side by side.
VARIANT_SWEEP = (
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
    VariantSpec("lora_plus", "lora_plus", lr=1e-3),
    VariantSpec("rac", "rac", chain=2, lr=2e-3),
    VariantSpec("random_cla", "random_cla"),
    VariantSpec("random_c3la", "random_c3la", chain=2),
    VariantSpec("paca", "paca", lr=2e-3),
)
#: The grid's data and report settings: a fixed test set of 1,000 tweets, the top layer
#: adapted, and reports sized so that 18 of them take about 3 minutes on 2 cores.
_GRID_CONFIG = {
    "n_train": 2000,
    "n_test": 1000,
    "test_first": True,
    "layers": (5,),
    "curvature_examples": 128,
    "trace_products": 10,
    "density_probes": 1,
    "density_steps": 12,
    "landscape_steps": 13,
    "pacbayes_samples": 50,
    "sharpness_examples": 256,
    "sharpness_samples": 3,
    "sharpness_ascent_steps": 1,
    "sharpness_spaces": ("merged",),
}
#: The subspace runs train on 6,000 tweets (the grid's sets are its first 500 and 2,000): a
#: compression bound needs N well above the code's few hundred to thousand bits.
CERTIFIED_N = 6000
DEFAULT = DemoConfig(**_GRID_CONFIG, variants=GRID + subspace_runs(("lora", "cla"), CERTIFIED_N))
STUDY = DemoConfig(
    **_GRID_CONFIG, variants=STUDY_GRID + subspace_runs(("lora", "asym", "cla"), CERTIFIED_N)
)
ALL = DemoConfig(variants=VARIANT_SWEEP)
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
    task = tweets_task(**cfg.task_kwargs(spec))
    base = minilm_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the fresh head's initialisation
        model = task.build_model(None)
    top = len(model.base_model.encoder.layer)
    start = top if spec.method == "head" else min(cfg.layers)  # a head needs only the top
    also = (top,) if spec.method == "head" else ()  # the encoder's output, for a head
    for data in (task.train, task.test):  # one pass for every run and report of the sweep
        task.cached_batches(model, data, min(cfg.layers), base, also=also)
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
    metrics |= {"epochs": epochs, "lr": spec.lr}  # what a sweep compares runs by
    metrics["train_seconds"] = time.perf_counter() - start_time
    path = handle.save(
        job.run_dir,
        base_model={"path": str(base), "python": BASE_MODEL_PYTHON},
        data=task_reference(**cfg.task_kwargs(spec)),
        n_train=len(task.train),
        metrics=metrics,
        overwrite=True,
    )
    log.info("%s trained in %.1f s -> %s", spec.name, metrics["train_seconds"], path)
    return path
