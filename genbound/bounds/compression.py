"""Compression PAC-Bayes bound (Lotfi et al. 2022) for the trainable tensors of a run.

With a prior P(h) = 2^(-K(h)) over a prefix code of K(h) bits, with probability
>= 1 - delta over the N training examples,

    kl(train_err || test_err) <= (K ln2 + ln(2 sqrt(N) / delta)) / N     (nats)

so ``test_err <= kl^-1(train_err, rhs)``. Here h is the model with its trainable
tensors quantized (W0, the architecture and the seed cost nothing) and train_err is the
0-1 error of that quantized model on the N training examples.

Other bounded errors: for an error with values in [0, R] (a task's metric, e.g. a squared
error clipped at R), the bound is applied to error / R, which lies in [0, 1]: the kl bound
holds for any loss in [0, 1] with the same ln(2 sqrt(N) / delta) (Maurer 2004, "A note on
the PAC Bayesian theorem": E exp(N kl(emp || mean)) is largest for a 0-1 loss). So
``test_err <= R kl^-1(train_err / R, rhs)``; for the 0-1 error R = 1 and nothing changes.
The bound says nothing at or above the error's chance level (1 - 1/K for K classes, the
trivial predictor's error for another metric), else at or above R.

The code, exactly:

* Quantization: a codebook of 2^b levels fitted to the values by Lloyd's algorithm
  (1-D k-means, deterministic init at the quantiles (j + 1/2) / 2^b), one codebook shared
  by all tensors or one per tensor. Each value maps to its nearest level.
* Codebook cost: 2^b levels per codebook, each stored as an IEEE float of
  ``codebook_bits`` = 16 (half) or 32 (single) bits; the levels are rounded to that
  precision before the values are assigned, so the decoded model is exactly the one
  evaluated.
* Indices: one message per codebook (all indices it serves, tensors in the given
  order), coded by an adaptive arithmetic coder with the Krichevsky-Trofimov (KT)
  estimator P(next = j) = (n_j + 1/2) / (t + K/2), K = 2^b levels. The code length is
  ``ceil(-log2 P_KT(message)) + 1`` bits: the Shannon-Fano-Elias / exact arithmetic
  code length (at most 2 bits over the ideal), with
  ``-log2 P_KT = log2 Gamma(n + K/2) - log2 Gamma(K/2) - sum_j log2(Gamma(n_j + 1/2) / Gamma(1/2))``.
  No counts are sent (the coder adapts); n, the number of indices, is known from the shapes.
  The empirical entropy n H(counts) bits is reported too, for comparison only.
* Choice of b: the bound is evaluated for every candidate b and the smallest is
  reported; the choice is paid for by a union bound, adding ln(#candidates) nats to the
  numerator (each candidate is a bound at confidence delta / #candidates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from genbound.bounds.kl import kl_inverse
from genbound.checkpoint.updates import SEP, nested
from genbound.errors import GenboundError

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint

__all__ = [
    "CODEBOOK_MODES",
    "CodeLength",
    "CompressionBoundResult",
    "CompressionCandidate",
    "PartCode",
    "Preamble",
    "Quantization",
    "code_length",
    "compression_bound",
    "elias_gamma_bits",
    "kt_code_length_bits",
    "lloyd_codebook",
    "pac_bayes_kl_bound",
    "quantize",
    "trainable_tensors",
]

log = logging.getLogger(__name__)

CODEBOOK_MODES = ("shared", "per_tensor")
_FLOAT_OF_BITS = {16: np.float16, 32: np.float32}
LN2 = math.log(2.0)


# -- what is coded -----------------------------------------------------------------------


def trainable_tensors(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The tensors a decoder needs besides W0 and the seed: ``"{update}::{factor}"`` -> tensor.

    Each update says which of its tensors trained
    (:meth:`~genbound.checkpoint.updates.Update.trained_tensors`): low-rank and selector
    updates give their trained factors (``::B``, ``::A``); chains give every link's
    (``::link{i}::B``); DoRA adds ``::magnitude``; VeRA gives ``::b`` and ``::d``; dense
    updates (full fine-tuning, heads, ``modules_to_save``) give dW (``::delta``, math
    orientation, float64; the value itself for a new tensor without a stored reference).
    Frozen tensors (a random A, selector indices, VeRA's projections) are not included:
    the seed determines them.

    A subspace run (:class:`~genbound.checkpoint.subspace.SubspaceCode`) codes only its z:
    ``subspace::link<i>::z`` (d,) per link; its factors are theta_0 + P z, with theta_0
    and P fixed by the seed.
    """
    if checkpoint.subspace is not None:
        return checkpoint.subspace.tensors()
    out: dict[str, torch.Tensor] = {}
    for name, u in checkpoint.updates.items():
        out.update({f"{name}{SEP}{k}": v for k, v in u.trained_tensors().items()})
    return out


def with_trainable_tensors(
    checkpoint: Checkpoint, tensors: Mapping[str, torch.Tensor]
) -> Checkpoint:
    """A copy of ``checkpoint`` whose trained tensors are replaced by ``tensors`` (same keys as
    :func:`trainable_tensors`, e.g. their quantized values). W0 stays what it was; a
    subspace run's updates are rebuilt from the given z."""
    if checkpoint.subspace is not None:
        return dataclasses.replace(checkpoint, updates=checkpoint.subspace.updates_with(tensors))
    updates = {
        name: u.with_trained(nested(tensors, name)) for name, u in checkpoint.updates.items()
    }
    return dataclasses.replace(checkpoint, updates=updates)


# -- quantization -----------------------------------------------------------------------


def lloyd_codebook(
    values: np.ndarray, num_levels: int, *, max_iter: int = 100
) -> tuple[np.ndarray, int]:
    """Lloyd's algorithm (1-D k-means) on ``values``: ``(levels (num_levels,) sorted, iterations)``.

    Deterministic: the levels start at the quantiles (j + 1/2) / num_levels and the
    assignment uses the midpoints between sorted levels; an empty cell keeps its level.
    Runs until the levels stop changing or ``max_iter``. O(n log n) once (the sort) plus
    O(num_levels log n) per iteration. With at most ``num_levels`` distinct values, the
    levels are those values (padded by repeating the largest), and 0 iterations are run.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise GenboundError("quantize: expected at least one value to fit a codebook; found none.")
    distinct = np.unique(x)
    if distinct.size <= num_levels:  # every value gets its own level: zero distortion
        return np.concatenate([distinct, np.full(num_levels - distinct.size, distinct[-1])]), 0
    cs = np.concatenate([[0.0], np.cumsum(x)])
    c = np.quantile(x, (np.arange(num_levels) + 0.5) / num_levels)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        cuts = np.searchsorted(x, 0.5 * (c[:-1] + c[1:]), side="right")
        edges = np.concatenate([[0], cuts, [x.size]])
        counts = np.diff(edges)
        sums = cs[edges[1:]] - cs[edges[:-1]]
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    return c, it


def _assign(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``levels`` for every value (ties: the lower)."""
    idx = np.searchsorted(0.5 * (levels[:-1] + levels[1:]), values, side="left")
    return idx.astype(np.uint8 if levels.size <= 256 else np.int32)


@dataclass(frozen=True)
class Quantization:
    """Trainable tensors quantized to codebooks of 2^b levels.

    Attributes:
        bits: b (2^b levels per codebook).
        mode: ``"shared"`` (one codebook) or ``"per_tensor"``.
        codebook_bits: 16 or 32, the float precision the levels are stored at.
        names: tensor names, in order.
        shapes: their shapes.
        codebooks: ``(levels,)`` for shared, one per tensor otherwise; each (2^b,)
            float64 holding exactly the stored (rounded) level values, sorted.
        indices: per tensor, the flattened (numel,) level indices.
        iterations: Lloyd iterations used per codebook.
    """

    bits: int
    mode: str
    codebook_bits: int
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    codebooks: tuple[np.ndarray, ...]
    indices: tuple[np.ndarray, ...]
    iterations: tuple[int, ...]

    def codebook_of(self, i: int) -> np.ndarray:
        return self.codebooks[0 if self.mode == "shared" else i]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The quantized tensors (float32, which holds every half or single level exactly)."""
        out = {}
        for i, (name, shape, idx) in enumerate(
            zip(self.names, self.shapes, self.indices, strict=True)
        ):
            vals = self.codebook_of(i)[idx.astype(np.int64)].astype(np.float32)
            out[name] = torch.from_numpy(vals.reshape(shape))
        return out


def _values(tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], list[np.ndarray]]:
    if not tensors:
        raise GenboundError("quantize: expected at least one trainable tensor; found none.")
    names, arrays = [], []
    for name, t in tensors.items():
        a = torch.as_tensor(t).detach().to(torch.float64).cpu().numpy().reshape(-1)
        if a.size == 0 or not np.all(np.isfinite(a)):
            raise GenboundError(
                f"quantize: tensor {name!r} must be non-empty and finite; found "
                f"{a.size} values, {int(np.sum(~np.isfinite(a)))} not finite."
            )
        names.append(name)
        arrays.append(a)
    return names, arrays


def _fit(values: np.ndarray, bits: int, codebook_bits: int, max_iter: int):
    levels, it = lloyd_codebook(values, 2**bits, max_iter=max_iter)
    stored = levels.astype(_FLOAT_OF_BITS[codebook_bits]).astype(np.float64)
    if not np.all(np.isfinite(stored)):
        raise GenboundError(
            f"quantize: a codebook level does not fit a {codebook_bits}-bit float; found "
            f"levels up to {np.max(np.abs(levels)):.3g}. Use codebook_bits=32."
        )
    return np.sort(stored), it


def quantize(
    tensors: Mapping[str, torch.Tensor],
    bits: int,
    *,
    codebook: str = "shared",
    codebook_bits: int = 16,
    max_iter: int = 100,
) -> Quantization:
    """Quantize named tensors to 2^``bits`` levels fitted by Lloyd's algorithm.

    Args:
        tensors: name -> tensor (any shape, finite), e.g. the trained factors of a run.
        bits: b >= 1.
        codebook: ``"shared"`` (one codebook for all tensors) or ``"per_tensor"``.
        codebook_bits: 16 or 32: levels are rounded to half or single precision.
        max_iter: Lloyd iterations at most.
    """
    if codebook not in CODEBOOK_MODES:
        raise GenboundError(f"codebook must be one of {CODEBOOK_MODES}; found {codebook!r}.")
    if codebook_bits not in _FLOAT_OF_BITS:
        raise GenboundError(f"codebook_bits must be 16 or 32; found {codebook_bits!r}.")
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= 16:
        raise GenboundError(f"quantize: bits must be an integer in [1, 16]; found {bits!r}.")
    bits = int(bits)
    names, arrays = _values(tensors)
    shapes = tuple(tuple(torch.as_tensor(tensors[n]).shape) for n in names)
    if codebook == "shared":
        levels, it = _fit(np.concatenate(arrays), bits, codebook_bits, max_iter)
        books, iters = (levels,), (it,)
        idx = tuple(_assign(a, levels) for a in arrays)
    else:
        fits = [_fit(a, bits, codebook_bits, max_iter) for a in arrays]
        books = tuple(f[0] for f in fits)
        iters = tuple(f[1] for f in fits)
        idx = tuple(_assign(a, f[0]) for a, f in zip(arrays, fits, strict=True))
    return Quantization(bits, codebook, codebook_bits, tuple(names), shapes, books, idx, iters)


# -- code length ---------------------------------------------------------------------------


def kt_code_length_bits(counts: Sequence[int] | np.ndarray) -> float:
    """-log2 P_KT of any message with these symbol counts (float64, bits).

    The adaptive Krichevsky-Trofimov probability depends only on the counts:
    P_KT = Gamma(K/2) prod_j Gamma(n_j + 1/2) / (Gamma(1/2)^K Gamma(n + K/2)), K = len(counts).
    """
    n_j = np.asarray(counts, dtype=np.float64)
    k = n_j.size
    n = float(n_j.sum())
    nats = (
        math.lgamma(n + k / 2.0)
        - math.lgamma(k / 2.0)
        - sum(math.lgamma(v + 0.5) - math.lgamma(0.5) for v in n_j.tolist())
    )
    return nats / LN2


@dataclass(frozen=True)
class PartCode:
    """The code of one codebook and the indices it serves.

    Attributes:
        name: ``"shared"`` or the tensor's name.
        num_levels: K = 2^b.
        num_indices: n, the number of coded indices.
        counts: (K,) occurrences of each level.
        codebook_bits: K x (16 or 32) bits.
        kt_bits: -log2 P_KT of the message (real number).
        index_bits: ceil(kt_bits) + 1, the arithmetic-code length used.
        empirical_entropy_bits: n H(counts / n), for comparison (not used in the bound).
    """

    name: str
    num_levels: int
    num_indices: int
    counts: np.ndarray
    codebook_bits: int
    kt_bits: float
    index_bits: int
    empirical_entropy_bits: float

    @property
    def total_bits(self) -> int:
        return self.codebook_bits + self.index_bits


def elias_gamma_bits(n: int) -> int:
    """Length of the Elias gamma code of a positive integer n: 2 floor(log2 n) + 1 bits
    (a prefix code of the positive integers, so n itself can be chosen after seeing data)."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise GenboundError(f"elias_gamma_bits: expected a positive integer; found {n!r}.")
    return 2 * (int(n).bit_length() - 1) + 1


@dataclass(frozen=True)
class Preamble:
    """Bits a code states before its codebooks and indices.

    Attributes:
        bits: the preamble's length.
        description: what it states and how (e.g. a subspace run's d, Elias gamma code).
    """

    bits: int
    description: str


@dataclass(frozen=True)
class CodeLength:
    """Code length K in bits of a :class:`Quantization` (sum over parts, plus the
    preamble's bits when there is one)."""

    parts: tuple[PartCode, ...]
    description: str
    preamble: Preamble | None = None

    @property
    def total_bits(self) -> int:
        head = self.preamble.bits if self.preamble is not None else 0
        return head + sum(p.total_bits for p in self.parts)


def _index_bits(kt_bits: float) -> int:
    # ceil(-log2 P) + 1; the lgamma sum carries an absolute error of order 1e-16 times the
    # largest lgamma term: round up past it so the length stays an upper bound.
    return math.ceil(kt_bits * (1.0 + 1e-12) + 1e-9) + 1


def _part(name: str, idx: np.ndarray, num_levels: int, precision: int) -> PartCode:
    counts = np.bincount(idx.astype(np.int64), minlength=num_levels)
    n = int(counts.sum())
    p = counts[counts > 0] / n
    kt = kt_code_length_bits(counts)
    return PartCode(
        name=name,
        num_levels=num_levels,
        num_indices=n,
        counts=counts,
        codebook_bits=num_levels * precision,
        kt_bits=kt,
        index_bits=_index_bits(kt),
        empirical_entropy_bits=float(-n * np.sum(p * np.log2(p))),
    )


def code_length(q: Quantization, preamble: Preamble | None = None) -> CodeLength:
    """Bits of the prefix code of ``q``: the preamble (if any), then codebooks plus KT
    arithmetic-coded indices."""
    k = 2**q.bits
    if q.mode == "shared":
        parts = (_part("shared", np.concatenate(q.indices), k, q.codebook_bits),)
    else:
        parts = tuple(
            _part(name, idx, k, q.codebook_bits)
            for name, idx in zip(q.names, q.indices, strict=True)
        )
    desc = (
        f"{len(parts)} codebook(s) of {k} levels at {q.codebook_bits}-bit floats; indices "
        "coded by adaptive arithmetic coding with the KT estimator, ceil(-log2 P_KT) + 1 "
        "bits per message"
    )
    if preamble is not None:
        desc = f"{preamble.description}; then {desc}"
    return CodeLength(parts, desc, preamble)


# -- the bound --------------------------------------------------------------------------------


def pac_bayes_kl_bound(
    train_error: float, code_bits: int, n_train: int, delta: float, num_candidates: int = 1
) -> tuple[float, float]:
    """``(rhs, bound)``: rhs = (K ln2 + ln(2 sqrt(N) / delta) + ln(#candidates)) / N nats,
    bound = kl^-1(train_error, rhs) (an error in [0, 1])."""
    rhs = (
        code_bits * LN2 + math.log(2.0 * math.sqrt(n_train) / delta) + math.log(num_candidates)
    ) / n_train
    return rhs, kl_inverse(train_error, rhs)


@dataclass(frozen=True)
class CompressionCandidate:
    """One candidate b: its quantization, code, train error and bound.

    ``floor`` = R kl^-1(0, rhs) is the bound this b would give with zero train error. A
    candidate whose floor is not below the best bound already found cannot be chosen, so
    its model is not evaluated (``evaluated`` False, ``train_error`` and ``bound`` None);
    the chosen bound is exactly the one an evaluation of every candidate gives.
    """

    bits: int
    quantization: Quantization
    code: CodeLength
    code_bits: int
    rhs: float
    floor: float
    train_error: float | None
    bound: float | None

    @property
    def evaluated(self) -> bool:
        return self.bound is not None


@dataclass(frozen=True)
class CompressionBoundResult:
    """The compression bound at the best candidate b, with everything to check it by hand.

    Attributes:
        bound: R kl^-1(train_error / R, rhs), a bound on the test error of the quantized
            model (the 0-1 error, R = 1, unless ``error_name`` says otherwise).
        chosen_bits: the b with the smallest bound (smallest b on ties).
        code_bits: K of that b (codebooks plus indices), bits.
        train_error: error of the quantized model on the N training examples.
        rhs: (K ln2 + ln(2 sqrt(N) / delta) + ln(#candidates)) / N, nats.
        n_train: N.
        delta: confidence; the bound holds with probability >= 1 - delta.
        num_candidates: number of candidate b (the union bound's ln(#candidates)).
        candidates: every candidate's :class:`CompressionCandidate`.
        vacuous_at: the error level at or above which the bound says nothing
            (1 - 1/num_classes when given, else the chance level when given, else R).
        vacuous: bound >= vacuous_at.
        assumptions, warnings.
        error_name: the error bounded (``"0-1 error"``).
        error_range: R, the error lies in [0, R].
        chance: the chance level given (1 - 1/num_classes when num_classes is given), or
            None.
    """

    bound: float
    chosen_bits: int
    code_bits: int
    train_error: float
    rhs: float
    n_train: int
    delta: float
    num_candidates: int
    candidates: tuple[CompressionCandidate, ...]
    vacuous_at: float
    vacuous: bool
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    error_name: str = "0-1 error"
    error_range: float = 1.0
    chance: float | None = None

    @property
    def chosen(self) -> CompressionCandidate:
        return next(c for c in self.candidates if c.bits == self.chosen_bits)

    @property
    def preamble(self) -> Preamble | None:
        """What the chosen code states before its codebooks (a subspace run's d), or None."""
        return self.chosen.code.preamble

    @property
    def quantized(self) -> dict[str, torch.Tensor]:
        """The quantized tensors of the chosen b (float32)."""
        return self.chosen.quantization.tensors()


def _check_error(b: int, err, name: str, r: float) -> float:
    e = float(err)
    if not 0.0 <= e <= r:
        raise GenboundError(
            f"compression bound: the train {name} of the quantized model (b={b}) must lie "
            f"in [0, {r:g}]; found {err!r}."
        )
    return e


def _error_range(error_range) -> float:
    r = error_range
    if isinstance(r, bool) or not (isinstance(r, int | float) and math.isfinite(r) and r > 0):
        raise GenboundError(
            f"compression bound: error_range must be a finite number > 0 (the error lies in "
            f"[0, error_range]); found {error_range!r}."
        )
    return float(r)


def _vacuity(num_classes: int | None, chance: float | None, r: float, name: str):
    """(vacuous_at, chance, warning or None): 1 - 1/num_classes, else chance, else R."""
    if num_classes is not None:
        if int(num_classes) < 2:
            raise GenboundError(f"num_classes must be >= 2; found {num_classes!r}.")
        if r != 1.0:
            raise GenboundError(
                f"compression bound: num_classes sets the chance level of a 0-1 error (range 1); "
                f"found the {name} with range [0, {r:g}]. Pass chance= instead."
            )
        level = 1.0 - 1.0 / int(num_classes)
        return level, level, None
    if chance is not None:
        if isinstance(chance, bool) or not (isinstance(chance, int | float) and 0 <= chance <= r):
            raise GenboundError(
                f"compression bound: chance must lie in [0, {r:g}] (the range of the {name}); "
                f"found {chance!r}."
            )
        return float(chance), float(chance), None
    if r == 1.0:
        return 1.0, None, "vacuity judged against 1 (pass num_classes to judge against chance)"
    return (
        r,
        None,
        f"vacuity judged against the error range {r:g} (pass chance to judge against chance)",
    )


def _fingerprint(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """A digest of named tensors' names, shapes, dtypes and bytes (equal digests: the same
    decoded model)."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def compression_bound(
    tensors: Mapping[str, torch.Tensor],
    evaluate_error: Callable[[Mapping[str, torch.Tensor]], float] | Mapping[int, float],
    n_train: int,
    *,
    bits: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8),
    delta: float = 0.05,
    codebook: str = "shared",
    codebook_bits: int = 16,
    max_iter: int = 100,
    num_classes: int | None = None,
    prune: bool = True,
    error_range: float = 1.0,
    chance: float | None = None,
    error_name: str = "0-1 error",
    preamble: Preamble | None = None,
    assumptions: Sequence[str] = (),
    measured: tuple[Mapping[str, torch.Tensor], float] | None = None,
) -> CompressionBoundResult:
    """Compression PAC-Bayes bound on the test error (0-1 unless said), b chosen by the bound.

    Args:
        tensors: the trainable tensors of the run (name -> tensor); everything else
            (W0, architecture, seed, frozen factors) is assumed known to the decoder.
        evaluate_error: called with the quantized tensors (name -> float32 tensor) of
            each candidate, returns the error on the N training examples; or a
            mapping b -> precomputed error for every candidate. Candidates are tried in
            order of code length; one whose zero-error bound cannot beat the best so far
            is not evaluated (``prune``), which leaves the result unchanged; a candidate
            whose quantized tensors equal an evaluated one's (e.g. every b at or above
            the number of distinct values) reuses its error.
        n_train: N, the number of training examples the error is measured on.
        bits: candidate b (2^b levels); ln(len(bits)) nats are paid for choosing.
        delta: confidence; the bound holds with probability >= 1 - delta.
        codebook, codebook_bits, max_iter: see :func:`quantize`.
        num_classes: when given, the bound is vacuous at or above 1 - 1/num_classes (a 0-1
            error only).
        prune: skip evaluating candidates that cannot be chosen (see
            :class:`CompressionCandidate`).
        error_range: R, the error lies in [0, R]; the bound is R kl^-1(error / R, rhs)
            (see the module docstring). 1 for the 0-1 error.
        chance: without ``num_classes``, the bound is vacuous at or above this error level
            (the trivial predictor's error); with neither, at or above R.
        error_name: the error in words, for the result (``"0-1 error"``).
        preamble: bits every candidate's code states first (e.g. a subspace run's d),
            counted in K.
        assumptions: further assumptions of the code, added to the result's.
        measured: ``(tensors, error)``, an error already measured on the same N examples
            for the model these tensors decode to (e.g. the trained tensors themselves): a
            candidate whose quantized tensors equal them uses it instead of evaluating.
    """
    n = int(n_train)
    if n <= 0:
        raise GenboundError(
            f"compression bound: n_train must be a positive integer; found {n_train!r}."
        )
    if not 0.0 < delta < 1.0:
        raise GenboundError(f"compression bound: delta must lie in (0, 1); found {delta!r}.")
    r = _error_range(error_range)
    vac_at, chance_level, vac_note = _vacuity(num_classes, chance, r, error_name)
    cands = list(dict.fromkeys(int(b) for b in bits))
    if not cands:
        raise GenboundError("compression bound: expected at least one candidate b; found none.")
    if isinstance(evaluate_error, Mapping):
        missing = [b for b in cands if b not in evaluate_error]
        if missing:
            raise GenboundError(
                f"compression bound: precomputed errors must cover every candidate b; "
                f"found none for b = {missing}."
            )
    coded = []
    for b in cands:
        q = quantize(tensors, b, codebook=codebook, codebook_bits=codebook_bits, max_iter=max_iter)
        code = code_length(q, preamble)
        rhs, floor = pac_bayes_kl_bound(0.0, code.total_bits, n, delta, len(cands))
        coded.append((b, q, code, rhs, r * floor))
    by_b: dict[int, CompressionCandidate] = {}
    seen: dict[bytes, float] = {}
    if measured is not None:
        known, known_error = measured
        known = {k: torch.as_tensor(v).detach() for k, v in known.items()}
        as_decoded = {k: v.to(torch.float32) for k, v in known.items()}
        # decoded tensors are float32: only a model float32 holds exactly can match one
        if all(torch.equal(as_decoded[k].to(v.dtype), v) for k, v in known.items()):
            seen[_fingerprint(as_decoded)] = _check_error(0, known_error, error_name, r)
    best = (math.inf, math.inf)  # (bound, bits): ties go to the smaller b
    for b, q, code, rhs, floor in sorted(coded, key=lambda x: (x[2].total_bits, x[0])):
        if prune and (floor, b) > best:  # its bound >= floor cannot win
            log.debug("compression bound: b=%d pruned (floor %.4g >= %.4g)", b, floor, best[0])
            by_b[b] = CompressionCandidate(b, q, code, code.total_bits, rhs, floor, None, None)
            continue
        if isinstance(evaluate_error, Mapping):
            err = _check_error(b, evaluate_error[b], error_name, r)
        else:
            decoded = q.tensors()
            key = _fingerprint(decoded)
            if key not in seen:  # b's that decode the same model share one evaluation
                seen[key] = _check_error(b, evaluate_error(decoded), error_name, r)
            err = seen[key]
        bound = r * kl_inverse(err / r, rhs)
        log.debug(
            "compression bound: b=%d K=%d bits err=%.4g bound=%.4g", b, code.total_bits, err, bound
        )
        by_b[b] = CompressionCandidate(b, q, code, code.total_bits, rhs, floor, err, bound)
        best = min(best, (bound, b))
    results = [by_b[b] for b in cands]
    best = min((c for c in results if c.evaluated), key=lambda c: (c.bound, c.bits))
    warns = [vac_note] if vac_note else []
    if best.bound >= vac_at:
        warns.append(f"bound {best.bound:.4g} >= {vac_at:.4g}: vacuous (reported as is)")
    assumptions = (
        *assumptions,
        "training examples are i.i.d.; the bound holds with probability >= 1 - delta over the sample",
        f"the error is the {error_name} of the quantized model (the decoded code) on the same N "
        "training examples",
        "prior P(h) = 2^(-K(h)) over a prefix code: W0, architecture, tensor names and shapes, "
        "the seed and frozen factors, the candidate set and the codebook mode are fixed before "
        "seeing the data and cost 0 bits",
        f"codebook levels stored as {codebook_bits}-bit IEEE floats ({codebook} codebook)",
        "indices: adaptive arithmetic code with the Krichevsky-Trofimov estimator, "
        "ceil(-log2 P_KT) + 1 bits per message (Shannon-Fano-Elias length, exact arithmetic)",
        f"b chosen among {len(cands)} candidates by the bound; paid by a union bound "
        f"(+ln({len(cands)}) nats in the numerator)",
    )
    if r != 1.0:
        assumptions += (
            f"the {error_name} lies in [0, {r:g}]; the kl bound, which holds for any loss in "
            "[0, 1] (Maurer 2004), is applied to the error divided by that range and scaled back",
        )
    return CompressionBoundResult(
        bound=best.bound,
        chosen_bits=best.bits,
        code_bits=best.code_bits,
        train_error=best.train_error,
        rhs=best.rhs,
        n_train=n,
        delta=float(delta),
        num_candidates=len(cands),
        candidates=tuple(results),
        vacuous_at=vac_at,
        vacuous=best.bound >= vac_at,
        assumptions=assumptions,
        warnings=tuple(warns),
        error_name=error_name,
        error_range=r,
        chance=chance_level,
    )
