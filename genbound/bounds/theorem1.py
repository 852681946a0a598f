"""Theorem 1 of the source paper, corrected: the correction terms Phi_dW and Phi_W0.

The paper bounds the generalization gap of the fine-tuned weights as
``G(W0 + dW) <= min(G(W0) + Phi_dW, G(dW) + Phi_W0)`` for an L-layer network
``f(x) = s_L(W_L ... s_1(W_1 x))`` with an L_loss-Lipschitz loss, L_l-Lipschitz
activations s_l and inputs of norm <= C. With a_l = ||W0_l||_2, b_l = ||dW_l||_2 and
c_l = ||s_l(0)|| (a bias folds into s_l), the corrected bound is the O(L) recursion

    N_0 = C,  D_0 = 0,  E_0 = 0
    N_l = L_l (a_l + b_l) N_{l-1} + c_l          (bounds ||h_l||)
    D_l = L_l a_l D_{l-1} + L_l b_l N_{l-1}      (bounds ||f(W0+dW) - f(W0)|| after l)
    E_l = L_l b_l E_{l-1} + L_l a_l N_{l-1}      (the same for f(W0+dW) - f(dW))
    Phi_dW = 2 L_loss D_L,   Phi_W0 = 2 L_loss E_L

Expanded, D_L is the paper's sum over the 2^L paths i = 1..2^L (layer j takes dW
when P(i, j) = 1) of every product that contains at least one dW factor, so that
``sum_P(dW) = prod_l (a_l + b_l) - prod_l a_l`` when all c_l = 0; E_L is the same with
at least one W0 factor. The recursion has no subtraction and is carried in log space
(``logaddexp``), so it neither overflows nor cancels: Phi reaches 10^20 to 10^170 for 50
to 150 layers.

The printed statement has two typos:

* P(i, j) must read bit (L - j) of (i - 1), i.e. ``floor((i - 1) / 2^(L - j)) mod 2``,
  not ``2^(L - 1)``. As printed, every layer reads the same bit, and the sum does not
  vanish when dW = 0, which a perturbation bound must.
* The F-sums (the offset terms c_t) of Phi_dW and Phi_W0 are swapped: H needs the same
  parity convention as P. As printed, Phi_dW is violated when b_l > a_l and c_l != 0.
  Counterexample: scalar layers, s_l(z) = z + 1 (L_l = 1, c_l = 1), a = 0.5, b = 2,
  L = 3, C = 1. The true output change |f(a + b) - f(a)| = 25.375 - 1.875 = 23.5; the
  corrected D_L is 23.5 (tight); the printed reading gives 18.25 < 23.5.

All arithmetic is float64 on natural logarithms; results are reported as log10.
Zero norms are allowed (log 0 = -inf): dW = 0 gives Phi_dW = 0, log10_phi_dW = -inf.

:func:`theorem1_norms` reads a_l and b_l from a checkpoint. Transformers (attention,
LayerNorm, residual branches) break the theorem's assumptions: for them only the
ordering of Phi across methods on one model is meaningful, and results say so.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from genbound.errors import GenboundError
from genbound.spectra.basecache import BaseSpectrumCache

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint

__all__ = [
    "TRANSFORMER_CAVEAT",
    "Theorem1Norms",
    "Theorem1Result",
    "order_layers",
    "theorem1",
    "theorem1_from_checkpoint",
    "theorem1_norms",
]

log = logging.getLogger(__name__)

TRANSFORMER_CAVEAT = (
    "transformers break the theorem's assumptions; only the ordering of Phi across "
    "methods on one model is meaningful"
)

_ASSUMPTIONS = (
    "network f(x) = s_L(W_L ... s_1(W_1 x)): a plain chain of linear maps and activations",
    "activation s_l is L_l-Lipschitz with ||s_l(0)|| <= c_l (a bias folds into c_l)",
    "inputs have ||x|| <= C (input_norm)",
    "the loss is L_loss-Lipschitz in the network output",
    "a_l, b_l are spectral norms (operator 2-norms) of W0_l and dW_l",
    "corrected reading of the paper's Theorem 1: P(i, j) = bit (L - j) of (i - 1), F-sums swapped back",
)

_LN10 = math.log(10.0)
_NEG_INF = -math.inf


@dataclass(frozen=True)
class Theorem1Result:
    """Correction terms of Theorem 1 (corrected), as base-10 logarithms.

    Attributes:
        base_norms: (L,) a_l = ||W0_l||_2, input side first.
        update_norms: (L,) b_l = ||dW_l||_2.
        lipschitz: (L,) L_l.
        offsets: (L,) c_l = ||s_l(0)||.
        input_norm: C.
        loss_lipschitz: L_loss.
        log10_phi_dW: log10(Phi_dW) = log10(2 L_loss D_L); -inf when Phi_dW = 0.
        log10_phi_W0: log10(Phi_W0) = log10(2 L_loss E_L).
        log10_N: (L + 1,) log10 N_l for l = 0..L (bounds on the hidden norms).
        log10_D: (L + 1,) log10 D_l (bounds on ||h_l(W0 + dW) - h_l(W0)||).
        log10_E: (L + 1,) log10 E_l (bounds on ||h_l(W0 + dW) - h_l(dW)||).
        layer_names: names of the layers when known (from a checkpoint), else ().
        assumptions: what the bound rests on.
        warnings: caveats about this particular evaluation.
    """

    base_norms: np.ndarray
    update_norms: np.ndarray
    lipschitz: np.ndarray
    offsets: np.ndarray
    input_norm: float
    loss_lipschitz: float
    log10_phi_dW: float
    log10_phi_W0: float
    log10_N: np.ndarray
    log10_D: np.ndarray
    log10_E: np.ndarray
    layer_names: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = _ASSUMPTIONS
    warnings: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return int(self.base_norms.shape[0])

    @property
    def phi_dW(self) -> float:
        """Phi_dW as a float64 (``inf`` when it exceeds float64; use the log10 instead)."""
        return _pow10(self.log10_phi_dW)

    @property
    def phi_W0(self) -> float:
        """Phi_W0 as a float64 (``inf`` when it exceeds float64)."""
        return _pow10(self.log10_phi_W0)


def _pow10(x: float) -> float:
    try:
        return 10.0**x
    except OverflowError:
        return math.inf


def _per_layer(name: str, value, num_layers: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(num_layers, float(arr))
    if arr.shape != (num_layers,):
        raise GenboundError(
            f"theorem1: {name} must be a scalar or have one value per layer; expected "
            f"shape ({num_layers},), found {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        bad = arr[~(np.isfinite(arr) & (arr >= 0))][:3]
        raise GenboundError(
            f"theorem1: {name} must be finite and >= 0 (norms and Lipschitz constants); "
            f"found {bad.tolist()}."
        )
    return arr


def _nonneg_scalar(name: str, value) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise GenboundError(f"theorem1: {name} must be a finite number >= 0; found {value!r}.")
    return v


def _log(x: np.ndarray) -> list[float]:
    with np.errstate(divide="ignore"):
        return np.log(x).tolist()


def _lae(x: float, y: float) -> float:
    """log(exp(x) + exp(y)) for floats that may be -inf (never +inf or nan here)."""
    if x < y:
        x, y = y, x
    if y == _NEG_INF:
        return x
    return x + math.log1p(math.exp(y - x))


def theorem1(
    base_norms: Sequence[float] | np.ndarray,
    update_norms: Sequence[float] | np.ndarray,
    *,
    lipschitz: float | Sequence[float] = 1.0,
    offsets: float | Sequence[float] = 0.0,
    input_norm: float = 1.0,
    loss_lipschitz: float = 1.0,
    layer_names: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> Theorem1Result:
    """Phi_dW and Phi_W0 of the corrected Theorem 1 by the O(L) log-space recursion.

    Args:
        base_norms: (L,) a_l = ||W0_l||_2, input side first (dimensionless, >= 0).
        update_norms: (L,) b_l = ||dW_l||_2.
        lipschitz: L_l, scalar or (L,).
        offsets: c_l = ||s_l(0)||, scalar or (L,) (0 for ReLU/GELU/tanh without bias).
        input_norm: C, a bound on ||x||.
        loss_lipschitz: L_loss.
        layer_names: optional names, stored in the result.
        warnings: caveats to carry in the result.

    Returns:
        :class:`Theorem1Result`; the cost is O(L) scalar operations (about 1 microsecond
        per layer), the values never overflow.
    """
    a = np.asarray(base_norms, dtype=np.float64).reshape(-1)
    num_layers = a.shape[0]
    if num_layers == 0:
        raise GenboundError("theorem1: expected at least one layer; found empty base_norms.")
    a = _per_layer("base_norms", a, num_layers)
    b = _per_layer(
        "update_norms", np.asarray(update_norms, dtype=np.float64).reshape(-1), num_layers
    )
    lip = _per_layer("lipschitz", lipschitz, num_layers)
    off = _per_layer("offsets", offsets, num_layers)
    c0 = _nonneg_scalar("input_norm", input_norm)
    lloss = _nonneg_scalar("loss_lipschitz", loss_lipschitz)
    if layer_names and len(layer_names) != num_layers:
        raise GenboundError(
            f"theorem1: expected {num_layers} layer names, found {len(layer_names)}."
        )

    la, lb, lab, ll, lc = _log(a), _log(b), _log(a + b), _log(lip), _log(off)
    ln = math.log(c0) if c0 > 0 else _NEG_INF
    ld = le = _NEG_INF
    ns, ds, es = [ln], [ld], [le]
    for l_ in range(num_layers):
        lip_l = ll[l_]
        ld, le = (
            _lae(lip_l + la[l_] + ld, lip_l + lb[l_] + ln),
            _lae(lip_l + lb[l_] + le, lip_l + la[l_] + ln),
        )
        ln = _lae(lip_l + lab[l_] + ln, lc[l_])
        ns.append(ln)
        ds.append(ld)
        es.append(le)

    lfac = math.log(2.0 * lloss) if lloss > 0 else _NEG_INF
    inv = 1.0 / _LN10
    return Theorem1Result(
        base_norms=a,
        update_norms=b,
        lipschitz=lip,
        offsets=off,
        input_norm=c0,
        loss_lipschitz=lloss,
        log10_phi_dW=(lfac + ld) * inv,
        log10_phi_W0=(lfac + le) * inv,
        log10_N=np.array(ns) * inv,
        log10_D=np.array(ds) * inv,
        log10_E=np.array(es) * inv,
        layer_names=tuple(layer_names),
        warnings=tuple(warnings),
    )


# -- from a checkpoint ---------------------------------------------------------------

_INT = re.compile(r"\d+")


def order_layers(names: Sequence[str]) -> list[str]:
    """Names in model order: those carrying a numeric index sorted by it, naturally.

    Names that contain integers (``encoder.layer.10.attention.self.query``) are sorted
    among themselves by the tuple of those integers (so layer 10 comes after layer 9,
    not after layer 1); the sort is stable, so modules of one layer keep their given
    (file) order. Names without any integer (an embedding, a ``classifier``) keep their
    positions in the given order.
    """
    names = list(names)
    slots = [i for i, n in enumerate(names) if _INT.search(n)]
    indexed = sorted(
        (names[i] for i in slots), key=lambda n: tuple(int(x) for x in _INT.findall(n))
    )
    out = list(names)
    for slot, name in zip(slots, indexed, strict=True):
        out[slot] = name
    return out


@dataclass(frozen=True)
class Theorem1Norms:
    """Per-layer spectral norms read from a checkpoint, in layer order.

    Attributes:
        names: module names of the adapted matrix layers, input side first.
        base_norms: (L,) ||W0_l||_2 (0 for a tensor new to the model, e.g. a new head).
        update_norms: (L,) ||dW_l||_2.
        skipped: updates left out (vectors: biases and norm weights fold into s_l).
    """

    names: tuple[str, ...]
    base_norms: np.ndarray
    update_norms: np.ndarray
    skipped: tuple[str, ...] = ()


def theorem1_norms(
    checkpoint: Checkpoint,
    *,
    names: Sequence[str] | None = None,
    cache: BaseSpectrumCache | None = None,
    known: Mapping[str, tuple[float, float]] | None = None,
) -> Theorem1Norms:
    """a_l = ||W0_l||_2 and b_l = ||dW_l||_2 for the checkpoint's adapted matrix layers.

    Layer order: ``names`` when given (used as is), else the checkpoint's update order
    rearranged by :func:`order_layers`. Vector updates (biases, norm weights) are
    skipped and listed. ||dW||_2 uses each update's factored form (an r x r problem for
    low-rank updates); ||W0||_2 comes from the base spectrum cache shared with
    ``genbound.spectra`` (``cache``, default the user cache directory): computed once per
    base layer, exact in float64 up to 1024 x 1024, from a float32 Gram eigendecomposition
    above (relative error about 1e-6), read one base tensor at a time.

    Raises:
        GenboundError: when the checkpoint has no base model, or a name is unknown.
    """
    if checkpoint.base is None:
        raise GenboundError(
            f"{checkpoint.path}: Theorem 1 needs ||W0_l||_2 of every adapted layer, so it "
            f"needs the base model, which was not found (the checkpoint names "
            f"{checkpoint.base_ref or 'none'}); load the checkpoint with base=PATH (--base PATH)."
        )
    cache = cache if cache is not None else BaseSpectrumCache()
    updates = checkpoint.updates
    if names is None:
        order = order_layers(list(updates))
    else:
        missing = [n for n in names if n not in updates]
        if missing:
            raise GenboundError(
                f"theorem1_norms: expected names of the checkpoint's updates; found unknown "
                f"{missing[:3]} (known: {list(updates)[:5]}...)."
            )
        order = list(names)
    kept, skipped, a, b = [], [], [], []
    for name in order:
        u = updates[name]
        if not u.is_matrix:
            skipped.append(name)
            continue
        kept.append(name)
        if known is not None and name in known:  # (||W0||_2, ||dW||_2) already measured
            a.append(known[name][0])
            b.append(known[name][1])
            continue
        a.append(0.0 if u.is_new else cache.get(u.base_weight(torch.float32)).spectral_norm)
        b.append(u.spectral_norm())
        log.debug("theorem1_norms: %s a=%.6g b=%.6g", name, a[-1], b[-1])
    if not kept:
        raise GenboundError(
            f"{checkpoint.path}: Theorem 1 needs at least one adapted matrix layer; found "
            f"only vector updates ({len(skipped)})."
        )
    return Theorem1Norms(tuple(kept), np.array(a), np.array(b), tuple(skipped))


def theorem1_from_checkpoint(
    checkpoint: Checkpoint,
    *,
    lipschitz: float | Sequence[float] = 1.0,
    offsets: float | Sequence[float] = 0.0,
    input_norm: float = 1.0,
    loss_lipschitz: float = 1.0,
    names: Sequence[str] | None = None,
    cache: BaseSpectrumCache | None = None,
    known: Mapping[str, tuple[float, float]] | None = None,
) -> Theorem1Result:
    """:func:`theorem1` with the norms of :func:`theorem1_norms`, labelled with the caveat."""
    norms = theorem1_norms(checkpoint, names=names, cache=cache, known=known)
    warns = [TRANSFORMER_CAVEAT]
    if norms.skipped:
        warns.append(
            f"{len(norms.skipped)} vector updates (biases, norms) are not layers of the "
            "chain; they are left out (fold them into the offsets c_l if needed)"
        )
    return theorem1(
        norms.base_norms,
        norms.update_norms,
        lipschitz=lipschitz,
        offsets=offsets,
        input_norm=input_norm,
        loss_lipschitz=loss_lipschitz,
        layer_names=norms.names,
        warnings=tuple(warns),
    )
