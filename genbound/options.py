"""What a report is computed with: one typed, JSON-serialisable record.

:class:`ReportOptions` is what the command line, the demo, Python callers and sweep workers
pass to :func:`genbound.measures.measure_checkpoint`. It is checked when it is made (a typo
fails where it was written, not inside a worker) and travels as JSON
(:meth:`ReportOptions.to_json`, :meth:`ReportOptions.from_json`).

Kept free of heavy imports: the command line builds it before it loads torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genbound.errors import GenboundError
from genbound.parts import PARTS, check_parts

#: What a report's Hessian is taken with respect to, by ``curvature_space``.
CURVATURE_SPACES = {
    "merged": "the merged update dW of each adapted layer, on the directions its adapter "
    "reaches (invariant to how dW is factored; DoRA: its magnitudes and the directions its "
    "low-rank part reaches); other trained tensors in their own coordinates",
    "factors": "the adapter's trained factors (B, A; DoRA also its magnitudes), as trained; "
    "other trained tensors in their own coordinates",
    "tensors": "every entry of the updated tensors (merged model)",
}
#: What the flatness and sharpness searches perturb, by ``sharpness_spaces`` name.
SHARPNESS_SPACES = {
    "merged": "every entry of the merged weight W = W0 + dW of each updated tensor (not only "
    "the directions an adapter reaches; a head or bias as the model holds it)",
    "trained": "the adapter's trained tensors (B, A; dW of dense updates; DoRA's magnitudes; "
    "VeRA's b and d; a subspace run's z), as trained",
}
#: ``MODULE:ATTR`` naming a user measure (see :mod:`genbound.measures.user`).
MEASURE_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")
_BASE_SVD = ("compute", "cached")
_MI_LOSSES = ("zero_one", "clipped_ce", "smoothed_ce", "bounded")


@dataclass(frozen=True)
class ReportOptions:
    """The settings of one report.

    Attributes:
        parts: genbound's own measures to compute (see :mod:`genbound.parts`), kept sorted.
        mi_loss: keywords of :func:`genbound.bounds.mi_bound` choosing the MI bound's loss
            (e.g. ``{"loss": "clipped_ce", "loss_range": 5}``); None: the error the task's
            metric declares (the 0-1 loss for classification, and without a task).
        curvature_space: what the Hessian is taken with respect to (``CURVATURE_SPACES``).
        curvature_examples: training examples of curvature and landscapes (a seeded sample
            stratified by label).
        trace_products: Hessian-vector products of the Hutch++ trace. The defaults (256
            examples, 10 products) were chosen from measured uncertainty
            (``bench/curvature_budget.py`` on a demo LoRA checkpoint): Hutch++'s own
            relative standard error 0.09 and a spread of 0.10 between samples of 256
            examples, 0.13 together; 128 examples spread 0.23 to 0.26 between samples, 32
            examples 0.2 to 0.4, whatever the budget.
        density_probes, density_steps: probes and Lanczos steps of the SLQ density.
        landscape_steps: points of each 1-D landscape (4 k + 1).
        pacbayes_samples: m, models drawn for the Gaussian PAC-Bayes certificate's Monte
            Carlo estimate (each evaluated on about N / m training examples: about one pass
            over the training set in all, plus a pilot on 256 examples).
        sharpness_examples: training examples of the flatness and sharpness searches (a
            seeded sample stratified by label, drawn like the curvature's).
        sharpness_samples: noise draws per step of the Gaussian searches.
        sharpness_starts: random starts per step of the adversarial searches.
        sharpness_depth: bisection steps of each search, at most.
        sharpness_ascent_steps: projected-gradient steps of each adversarial start.
        sharpness_spaces: where the searches perturb (``SHARPNESS_SPACES``); the sweep
            ranks the merged space's, which do not depend on how dW is factored.
        seed: seeds the example samples, Lanczos, Hutch++, SLQ, the random direction, the
            Gaussian certificate's draws and the flatness searches' draws.
        n_train: N, overriding the checkpoint's record (None: the checkpoint's, else the
            task's).
        device: where the model runs on data (``cpu``, ``cuda``, ``cuda:N``, ``mps``).
        base_svd: ``"cached"`` computes base-relative spectra only for layers whose W0 SVD
            is cached (see :func:`genbound.spectra.analyze_spectra`).
        measures: user measures, as ``MODULE:ATTR`` (see :mod:`genbound.measures.user`);
            they are computed whatever ``parts`` says.
    """

    parts: tuple[str, ...] = PARTS
    mi_loss: Mapping[str, Any] | None = None
    curvature_space: str = "merged"
    curvature_examples: int = 256
    trace_products: int = 10
    density_probes: int = 2
    density_steps: int = 20
    landscape_steps: int = 21
    pacbayes_samples: int = 100
    sharpness_examples: int = 512
    sharpness_samples: int = 5
    sharpness_starts: int = 1
    sharpness_depth: int = 12
    sharpness_ascent_steps: int = 3
    sharpness_spaces: tuple[str, ...] = ("merged", "trained")
    seed: int = 0
    n_train: int | None = None
    device: str = "cpu"
    base_svd: str = "compute"
    measures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "parts", tuple(sorted(check_parts(self.parts))))
        set_(self, "mi_loss", dict(self.mi_loss) if self.mi_loss is not None else None)
        set_(self, "measures", tuple(self.measures))
        set_(self, "sharpness_spaces", tuple(self.sharpness_spaces))
        _check(self)

    def replace(self, **changes: Any) -> ReportOptions:
        """A copy with ``changes`` (checked like the original)."""
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise GenboundError(
                f"report options: unknown option(s) {unknown}; expected some of {list(_FIELDS)}."
            )
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON object (``measures`` only when there are some)."""
        out = {f: getattr(self, f) for f in _FIELDS if f != "measures"}
        out["parts"] = list(self.parts)
        out["sharpness_spaces"] = list(self.sharpness_spaces)
        if self.measures:
            out["measures"] = list(self.measures)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, where: str = "report options") -> ReportOptions:
        """Options from :meth:`to_json`'s form (missing keys take their defaults); a
        GenboundError naming ``where`` and the key for anything else."""
        if not isinstance(doc, Mapping):
            raise GenboundError(f"{where}: expected a JSON object; found {type(doc).__name__}.")
        unknown = sorted(set(doc) - set(_FIELDS))
        if unknown:
            raise GenboundError(
                f"{where}: unknown option(s) {unknown}; expected some of {list(_FIELDS)}."
            )
        kw = dict(doc)
        for key in ("parts", "measures", "sharpness_spaces"):
            if key in kw:
                if not isinstance(kw[key], (list, tuple)):
                    raise GenboundError(
                        f"{where} [key {key!r}]: expected a list of names; found {kw[key]!r}."
                    )
                kw[key] = tuple(kw[key])
        try:
            return cls(**kw)
        except GenboundError as exc:
            raise GenboundError(f"{where}: {exc}") from None


_FIELDS = tuple(f.name for f in dataclasses.fields(ReportOptions))


def _check(o: ReportOptions) -> None:
    """A GenboundError naming the first option that is not what it must be."""

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise GenboundError(f"option {key!r}: expected {expected}; found {getattr(o, key)!r}.")

    def count(key: str, minimum: int) -> None:
        v = getattr(o, key)
        need(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            key,
            f"an integer >= {minimum}",
        )

    need(
        o.curvature_space in CURVATURE_SPACES, "curvature_space", f"one of {list(CURVATURE_SPACES)}"
    )
    for key in (
        "curvature_examples",
        "trace_products",
        "density_probes",
        "density_steps",
        "pacbayes_samples",
        "sharpness_examples",
        "sharpness_samples",
        "sharpness_starts",
        "sharpness_depth",
        "sharpness_ascent_steps",
    ):
        count(key, 1)
    count("landscape_steps", 5)
    need((o.landscape_steps - 1) % 4 == 0, "landscape_steps", "4 k + 1 points (5, 9, ..., 21)")
    count("seed", 0)
    if o.n_train is not None:
        count("n_train", 1)
    need(
        isinstance(o.device, str) and bool(_DEVICE.fullmatch(o.device)),
        "device",
        "cpu, cuda, cuda:N or mps",
    )
    need(o.base_svd in _BASE_SVD, "base_svd", f"one of {list(_BASE_SVD)}")
    spaces = o.sharpness_spaces
    need(
        len(spaces) > 0
        and len(set(spaces)) == len(spaces)
        and all(isinstance(x, str) and x in SHARPNESS_SPACES for x in spaces),
        "sharpness_spaces",
        f"distinct names of {list(SHARPNESS_SPACES)}",
    )
    need(
        o.mi_loss is None or o.mi_loss.get("loss") in _MI_LOSSES,
        "mi_loss",
        f"None or a 'loss' of {list(_MI_LOSSES)}",
    )
    need(
        all(isinstance(m, str) and MEASURE_SPEC.fullmatch(m) for m in o.measures),
        "measures",
        "MODULE:ATTR names (e.g. mypkg.measures:weight_norm)",
    )
