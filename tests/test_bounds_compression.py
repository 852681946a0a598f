"""kl inverse, Lloyd quantization, KT arithmetic code length, compression bound."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from genbound.bounds import (
    binary_kl,
    code_length,
    compression_bound,
    kl_inverse,
    kt_code_length_bits,
    lloyd_codebook,
    quantize,
)
from genbound.errors import GenboundError

# -- kl ---------------------------------------------------------------------------------


def test_binary_kl_closed_form():
    q, p = 0.2, 0.35
    assert binary_kl(q, p) == pytest.approx(
        0.2 * math.log(0.2 / 0.35) + 0.8 * math.log(0.8 / 0.65), rel=1e-15
    )
    assert binary_kl(0.0, 0.3) == pytest.approx(-math.log(0.7), rel=1e-15)
    assert binary_kl(0.3, 1.0) == math.inf


@pytest.mark.parametrize("q,p", [(0.2, 0.2 + 1e-7), (0.5, 0.49), (1e-4, 0.3), (0.9, 0.999999)])
def test_binary_kl_against_mpmath(q, p):
    with mpmath.workdps(50):
        mq, mp_ = mpmath.mpf(q), mpmath.mpf(p)
        ref = mq * mpmath.log(mq / mp_) + (1 - mq) * mpmath.log((1 - mq) / (1 - mp_))
    assert binary_kl(q, p) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("q", [0.0, 1e-6, 0.01, 0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("c", [1e-8, 1e-3, 0.05, 0.7, 5.0])
def test_kl_inverse(q, c):
    p = kl_inverse(q, c)
    assert q <= p <= 1.0
    if q == 0.0:
        assert p == pytest.approx(1 - math.exp(-c), rel=1e-15)
        return
    # p is the upper end of the bracket: kl(q, p) >= c >= kl(q, p - 1 ulp)
    if p < 1.0:
        assert binary_kl(q, p) >= c
        assert binary_kl(q, float(np.nextafter(p, 0.0))) <= c
    top = float(np.nextafter(1.0, 0.0))
    if binary_kl(q, top) <= c:  # the inverse rounds to 1 in float64
        assert p == 1.0
        return
    ref = brentq(lambda x: binary_kl(q, x) - c, q, top, xtol=1e-300, rtol=1e-15)
    assert p == pytest.approx(ref, rel=1e-13, abs=1e-300)


def test_kl_inverse_edges():
    assert kl_inverse(0.3, 0.0) == 0.3
    assert kl_inverse(1.0, 0.2) == 1.0
    assert kl_inverse(0.3, math.inf) == 1.0
    with pytest.raises(GenboundError):
        kl_inverse(1.2, 0.1)
    with pytest.raises(GenboundError):
        kl_inverse(0.2, -0.1)


# -- quantization ------------------------------------------------------------------------


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "l0.B": torch.randn(40, 4, generator=g) * 0.01,
        "l0.A": torch.randn(4, 30, generator=g) * 0.05,
        "head": torch.randn(3, 30, generator=g),
    }


def test_lloyd_fixed_point_and_nearest_assignment():
    x = np.random.default_rng(0).standard_t(3, size=2000)
    levels, it = lloyd_codebook(x, 8, max_iter=1000)
    assert it < 1000 and np.all(np.diff(levels) >= 0)
    nearest = np.argmin(np.abs(x[:, None] - levels[None, :]), axis=1)  # brute force
    for j in range(8):
        cell = x[nearest == j]
        if cell.size:
            assert levels[j] == pytest.approx(cell.mean(), rel=1e-12, abs=1e-15)
    again, _ = lloyd_codebook(x, 8, max_iter=1000)
    assert np.array_equal(levels, again)


def test_quantize_shared_and_per_tensor():
    t = _tensors()
    for mode, n_books in (("shared", 1), ("per_tensor", 3)):
        q = quantize(t, 3, codebook=mode, codebook_bits=16)
        assert len(q.codebooks) == n_books and all(c.size == 8 for c in q.codebooks)
        for c in q.codebooks:  # levels are exactly half-precision values
            assert np.array_equal(c.astype(np.float16).astype(np.float64), c)
        out = q.tensors()
        for i, (name, v) in enumerate(t.items()):
            book = q.codebook_of(i)
            x = v.double().numpy().reshape(-1)
            got = out[name].double().numpy().reshape(-1)
            assert out[name].shape == v.shape
            # every value went to a nearest level (brute force)
            dist = np.abs(x[:, None] - book[None, :])
            assert np.allclose(np.abs(x - got), dist.min(axis=1), rtol=0, atol=0)


def test_quantize_exact_when_levels_suffice():
    t = {"w": torch.tensor([0.5, -1.25, 0.5, 2.0, -1.25, 0.75])}
    q = quantize(t, 2, codebook_bits=32)
    assert torch.equal(q.tensors()["w"], t["w"])


def test_quantize_bad_input():
    with pytest.raises(GenboundError, match="finite"):
        quantize({"w": torch.tensor([1.0, math.nan])}, 2)
    with pytest.raises(GenboundError, match="codebook"):
        quantize(_tensors(), 2, codebook="global")
    with pytest.raises(GenboundError, match="bits"):
        quantize(_tensors(), 0)


# -- code length: KT formula vs an exact arithmetic coder ----------------------------------


def _kt_probs(counts, t, k):
    return [Fraction(2 * c + 1, 2 * t + k) for c in counts]


def _encode(msg, k):
    """Exact (rational) arithmetic coder, KT model: Shannon-Fano-Elias codeword bits."""
    low, width, counts = Fraction(0), Fraction(1), [0] * k
    for t, s in enumerate(msg):
        probs = _kt_probs(counts, t, k)
        low += width * sum(probs[:s], Fraction(0))
        width *= probs[s]
        counts[s] += 1
    # exact ceil(-log2 width): smallest l with 2^-l <= width
    length = 0
    while Fraction(1, 2**length) > width:
        length += 1
    length += 1
    mid = low + width / 2
    code = math.floor(mid * 2**length)  # first `length` bits of the midpoint
    return [(code >> (length - 1 - i)) & 1 for i in range(length)], width


def _decode(bits, n, k):
    v = sum(Fraction(b, 2 ** (i + 1)) for i, b in enumerate(bits))
    low, width, counts, out = Fraction(0), Fraction(1), [0] * k, []
    for t in range(n):
        probs = _kt_probs(counts, t, k)
        cum = low
        for s, p in enumerate(probs):
            if v < cum + width * p:
                out.append(s)
                low, width = cum, width * p
                counts[s] += 1
                break
            cum += width * p
    return out


@pytest.mark.parametrize("seed", range(6))
def test_code_length_against_exact_arithmetic_coder(seed):
    rng = np.random.default_rng(seed)
    b = 1 + seed % 3
    k = 2**b
    n = int(rng.integers(1, 60))
    msg = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k))).tolist()
    bits, width = _encode(msg, k)
    assert _decode(bits, n, k) == msg  # the codeword decodes
    # the closed form of -log2 P_KT equals the sequential product (exact)
    assert kt_code_length_bits(np.bincount(msg, minlength=k)) == pytest.approx(
        -math.log2(width), rel=1e-12
    )
    q = _quant_from_indices(msg, b)
    part = code_length(q).parts[0]
    assert part.index_bits == len(bits)  # our length = the actual coder's length
    assert part.codebook_bits == k * 16
    # KT is a mixture, so it never beats the empirical entropy
    assert part.kt_bits >= part.empirical_entropy_bits - 1e-9


def _quant_from_indices(msg, b):
    from genbound.bounds import Quantization

    levels = np.arange(2**b, dtype=np.float64)
    return Quantization(
        b, "shared", 16, ("w",), ((len(msg),),), (levels,), (np.array(msg, dtype=np.uint8),), (0,)
    )


def test_code_length_is_sum_over_parts():
    q = quantize(_tensors(), 2, codebook="per_tensor")
    code = code_length(q)
    assert len(code.parts) == 3
    assert code.total_bits == sum(p.codebook_bits + p.index_bits for p in code.parts)
    for p, idx in zip(code.parts, q.indices, strict=True):
        assert p.num_indices == idx.size and p.codebook_bits == 4 * 16


# -- the bound ----------------------------------------------------------------------------------


def test_compression_bound_by_hand():
    t = _tensors()
    seen = []

    def evaluate(qt):
        seen.append({k: v.clone() for k, v in qt.items()})
        return 0.02 * len(seen)  # more bits, worse (arbitrary, to exercise the choice)

    n, delta = 20_000, 0.05
    res = compression_bound(t, evaluate, n, bits=(1, 2, 3), delta=delta, num_classes=3)
    assert len(seen) == 3 and res.num_candidates == 3
    for cand, qt in zip(res.candidates, seen, strict=True):
        assert set(qt) == set(t)
        for name, v in cand.quantization.tensors().items():
            assert torch.equal(qt[name], v)
        k_bits = sum(p.codebook_bits + p.index_bits for p in cand.code.parts)
        assert cand.code_bits == k_bits
        rhs = (k_bits * math.log(2) + math.log(2 * math.sqrt(n) / delta) + math.log(3)) / n
        assert cand.rhs == pytest.approx(rhs, rel=1e-15)
        ref = brentq(
            lambda p, c=cand, h=rhs: binary_kl(c.train_error, p) - h,
            cand.train_error,
            float(np.nextafter(1.0, 0.0)),
            xtol=1e-16,
            rtol=1e-15,
        )
        assert cand.bound == pytest.approx(ref, rel=1e-12)
    best = min(res.candidates, key=lambda c: c.bound)
    assert res.chosen_bits == best.bits and res.bound == best.bound
    assert res.code_bits == best.code_bits and res.train_error == best.train_error
    assert not res.vacuous and res.bound < 0.2
    assert any("union bound" in a for a in res.assumptions)
    assert set(res.quantized) == set(t)


def test_compression_bound_precomputed_and_errors():
    t = _tensors()
    res = compression_bound(t, {1: 0.3, 2: 0.1}, 500, bits=(1, 2))
    assert res.vacuous == (res.bound >= 1.0)
    assert any("num_classes" in w for w in res.warnings)
    res = compression_bound(t, {1: 0.6}, 100, bits=(1,), num_classes=2)
    assert res.vacuous and res.bound >= 0.5  # reported as is
    with pytest.raises(GenboundError, match="every candidate"):
        compression_bound(t, {1: 0.3}, 500, bits=(1, 2))
    with pytest.raises(GenboundError, match=r"\[0, 1\]"):
        compression_bound(t, {1: 1.3}, 500, bits=(1,))
    with pytest.raises(GenboundError, match="n_train"):
        compression_bound(t, {1: 0.3}, 0, bits=(1,))
    with pytest.raises(GenboundError, match="delta"):
        compression_bound(t, {1: 0.3}, 10, bits=(1,), delta=1.5)


def test_trainable_tensors_of_a_checkpoint():
    from genbound.bounds import trainable_tensors
    from genbound.checkpoint import (
        ChainUpdate,
        Checkpoint,
        DenseUpdate,
        Hyperparams,
        LowRankUpdate,
        SelectorUpdate,
    )

    g = torch.Generator().manual_seed(0)
    lo = LowRankUpdate(
        name="l0",
        param="l0.weight",
        shape=(5, 4),
        B=torch.randn(5, 2, generator=g),
        A=torch.randn(2, 4, generator=g),
        scale=2.0,
        trained=("B",),
    )
    sel = SelectorUpdate(
        name="l1",
        param="l1.weight",
        shape=(5, 4),
        B=torch.randn(5, 2, generator=g),
        indices=torch.tensor([0, 3]),
    )
    chain = ChainUpdate(
        name="l2",
        param="l2.weight",
        shape=(5, 4),
        links=(
            LowRankUpdate(
                name="l2",
                param="l2.weight",
                shape=(5, 4),
                B=torch.randn(5, 1, generator=g),
                A=torch.randn(1, 4, generator=g),
                scale=1.0,
            ),
        ),
    )
    head = torch.randn(3, 4, generator=g)
    dense = DenseUpdate(
        name="head", param="head.weight", shape=(3, 4), value=lambda: head, new=True
    )
    ups = {u.name: u for u in (lo, sel, chain, dense)}
    ckpt = Checkpoint(
        path="mem",
        format="genbound",
        variant="lora",
        hparams=Hyperparams(),
        updates=ups,
        dtype=torch.float32,
    )
    t = trainable_tensors(ckpt)
    assert set(t) == {"l0::B", "l1::B", "l2::link0::B", "l2::link0::A", "head::delta"}
    assert torch.equal(t["l0::B"], lo.B) and torch.equal(t["l1::B"], sel.B)
    assert torch.equal(t["head::delta"], head.double())
    assert sum(v.numel() for v in t.values()) == ckpt.num_trainable


def test_pruning_leaves_the_bound_unchanged_and_skips_hopeless_candidates():
    t = _tensors()
    calls = []

    def evaluate(qt):
        calls.append(1)
        return 0.01  # every b as accurate: the shortest code wins, longer ones cannot

    n = 300  # small N: long codes have floors far above the best bound
    full = compression_bound(t, evaluate, n, bits=(1, 2, 4, 8), prune=False)
    assert len(calls) == 4
    calls.clear()
    pruned = compression_bound(t, evaluate, n, bits=(1, 2, 4, 8))
    assert 1 <= len(calls) < 4
    assert pruned.bound == full.bound and pruned.chosen_bits == full.chosen_bits
    for c in pruned.candidates:
        assert c.floor == pytest.approx(kl_inverse(0.0, c.rhs), rel=1e-15)
        if not c.evaluated:
            assert c.train_error is None
            assert (c.floor, c.bits) > (pruned.bound, pruned.chosen_bits)


def test_pruning_with_every_floor_at_one():
    """Codes far longer than N nats: every floor rounds to 1.0; one evaluation suffices and
    the choice (the smallest b among equal bounds) is unchanged."""
    t = {"w": torch.linspace(-1, 1, 4000).reshape(40, 100)}
    calls = []

    def evaluate(qt):
        calls.append(1)
        return 0.3

    full = compression_bound(t, evaluate, 10, bits=(1, 2, 3), prune=False)
    assert len(calls) == 3 and all(c.floor == 1.0 for c in full.candidates)
    calls.clear()
    pruned = compression_bound(t, evaluate, 10, bits=(1, 2, 3))
    assert len(calls) == 1
    assert (pruned.bound, pruned.chosen_bits) == (full.bound, full.chosen_bits)
