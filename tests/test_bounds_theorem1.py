"""Theorem 1 (corrected): recursion vs brute-force 2^L path sums, mpmath, real networks."""

from __future__ import annotations

import dataclasses
import math
import time
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genbound.bounds import (
    TRANSFORMER_CAVEAT,
    order_layers,
    theorem1,
    theorem1_from_checkpoint,
    theorem1_norms,
)
from genbound.checkpoint import BaseModel, Checkpoint, DenseUpdate, Hyperparams, LowRankUpdate
from genbound.errors import GenboundError

# -- brute force: the paper's sums over 2^L paths, written out -------------------------


def P(i: int, j: int, L: int) -> int:
    """Corrected: bit (L - j) of (i - 1); 1 means layer j takes dW."""
    return ((i - 1) // 2 ** (L - j)) % 2


def P_printed(i: int, j: int, L: int) -> int:
    """As printed: floor((i - 1) / 2^(L - 1)), the same bit for every layer."""
    return ((i - 1) // 2 ** (L - 1)) % 2


def path_sum(a, b, lip, first, L, excluded_bit, p=P):
    """sum over paths i of layers first..L of prod L_j w_j, as printed: i = 2..2^span for
    ``excluded_bit`` 0 (Phi_dW), i = 1..2^span - 1 for 1 (Phi_W0). In the corrected reading
    the index left out is the all-W0 (resp. all-dW) path."""
    span = L - first + 1
    left_out = 1 if excluded_bit == 0 else 2**span
    total = Fraction(0)
    for i in range(1, 2**span + 1):
        if i == left_out:
            continue
        term = Fraction(1)
        for j in range(first, L + 1):
            bit = p(i, j - first + 1, span)
            term *= lip[j - 1] * (b[j - 1] if bit else a[j - 1])
        total += term
    return total


def brute_force(a, b, lip, c, C, lloss, *, p=P, swap_f=False):
    """(Phi_dW, Phi_W0) as the paper's sums: a C-term over all L layers plus the F-sums
    of the offsets c_t over layers t+1..L; ``swap_f`` gives the printed (swapped) F-sums."""
    L = len(a)
    a, b, lip, c = ([Fraction(x) for x in v] for v in (a, b, lip, c))
    C, lloss = Fraction(C), Fraction(lloss)
    out = []
    for excl in (0, 1):  # 0: Phi_dW (leave out all-W0), 1: Phi_W0 (leave out all-dW)
        f_excl = 1 - excl if swap_f else excl
        s = C * path_sum(a, b, lip, 1, L, excl, p)
        for t in range(1, L):
            s += c[t - 1] * path_sum(a, b, lip, t + 1, L, f_excl, p)
        out.append(2 * lloss * s)
    return tuple(out)


def _log10(x: Fraction) -> float:
    return -math.inf if x == 0 else float(mpmath.log10(mpmath.mpf(x.numerator) / x.denominator))


def _rand_fracs(rng, n, lo, hi):
    return [Fraction(int(v), 1000) for v in rng.integers(int(lo * 1000), int(hi * 1000), n)]


@pytest.mark.parametrize("L", [1, 2, 3, 5, 8, 10])
def test_recursion_matches_brute_force(L):
    rng = np.random.default_rng(L)
    for _ in range(3):
        a, b = _rand_fracs(rng, L, 0, 3), _rand_fracs(rng, L, 0, 3)
        lip, c = _rand_fracs(rng, L, 0.5, 2), _rand_fracs(rng, L, 0, 2)
        C, lloss = Fraction(7, 4), Fraction(3, 2)
        exact_dw, exact_w0 = brute_force(a, b, lip, c, C, lloss)
        r = theorem1(
            [float(x) for x in a],
            [float(x) for x in b],
            lipschitz=[float(x) for x in lip],
            offsets=[float(x) for x in c],
            input_norm=float(C),
            loss_lipschitz=float(lloss),
        )
        assert abs(r.log10_phi_dW - _log10(exact_dw)) < 1e-13
        assert abs(r.log10_phi_W0 - _log10(exact_w0)) < 1e-13


@pytest.mark.parametrize("L", [1, 4, 10])
def test_closed_forms_without_offsets(L):
    rng = np.random.default_rng(100 + L)
    a, b = _rand_fracs(rng, L, 0.1, 3), _rand_fracs(rng, L, 0.1, 3)
    ones = [Fraction(1)] * L
    prod_ab = math.prod(x + y for x, y in zip(a, b, strict=True))
    assert path_sum(a, b, ones, 1, L, 0) == prod_ab - math.prod(a)
    assert path_sum(a, b, ones, 1, L, 1) == prod_ab - math.prod(b)
    r = theorem1([float(x) for x in a], [float(x) for x in b])
    assert abs(r.log10_phi_dW - _log10(2 * (prod_ab - math.prod(a)))) < 1e-13
    assert abs(r.log10_phi_W0 - _log10(2 * (prod_ab - math.prod(b)))) < 1e-13


def test_printed_p_does_not_vanish_at_zero_update():
    L, a, b, ones = 4, [Fraction(3, 2)] * 4, [Fraction(0)] * 4, [Fraction(1)] * 4
    assert path_sum(a, b, ones, 1, L, 0) == 0  # corrected
    assert path_sum(a, b, ones, 1, L, 0, p=P_printed) > 0  # as printed
    r = theorem1([1.5] * 4, [0.0] * 4, offsets=1.0)
    assert r.log10_phi_dW == -math.inf and r.phi_dW == 0.0


def _scalar_net(w, L, offset):
    h = 1.0
    for _ in range(L):
        h = w * h + offset
    return h


def test_counterexample_of_the_printed_statement():
    a, b, L = 0.5, 2.0, 3
    true_change = _scalar_net(a + b, L, 1.0) - _scalar_net(a, L, 1.0)
    assert true_change == 23.5
    r = theorem1([a] * L, [b] * L, lipschitz=1.0, offsets=1.0, input_norm=1.0, loss_lipschitz=1.0)
    # Phi = 2 L_loss D_L; D_L is the output-change bound, tight here.
    assert 10 ** r.log10_D[-1] == pytest.approx(23.5, rel=1e-14)
    assert r.phi_dW == pytest.approx(47.0, rel=1e-14)
    fr = [Fraction(a)] * L, [Fraction(b)] * L, [Fraction(1)] * L, [Fraction(1)] * L
    corrected, _ = brute_force(*fr, 1, 1)
    printed, _ = brute_force(*fr, 1, 1, swap_f=True)
    assert corrected == 47 and printed == Fraction(73, 2)  # 2 x 18.25
    assert printed / 2 < true_change  # the printed bound is violated


def test_zero_norms_and_zero_base():
    r = theorem1([1.0, 2.0, 0.5], [0.0, 0.0, 0.0], offsets=[0.0, 1.0, 0.3])
    assert r.log10_phi_dW == -math.inf
    assert math.isfinite(r.log10_phi_W0)
    r = theorem1([0.0, 0.0], [1.0, 2.0])  # W0 = 0, no offsets: f(W0 + dW) = f(dW)
    assert r.log10_phi_W0 == -math.inf
    assert r.log10_phi_dW == pytest.approx(math.log10(2 * 2.0))
    r = theorem1([1.0], [1.0], input_norm=0.0)
    assert r.log10_phi_dW == -math.inf


def test_L150_matches_mpmath_including_beyond_float64():
    rng = np.random.default_rng(7)
    L = 150
    for lo, hi in ((0.5, 3.0), (100.0, 1000.0)):
        a, b = rng.uniform(lo, hi, L), rng.uniform(0, hi / 10, L)
        lip, c = rng.uniform(0.5, 1.5, L), rng.uniform(0, 2, L)
        r = theorem1(a, b, lipschitz=lip, offsets=c, input_norm=2.0, loss_lipschitz=0.5)
        with mpmath.workdps(80):
            n, d, e = mpmath.mpf(2), mpmath.mpf(0), mpmath.mpf(0)
            for al, bl, ll, cl in zip(a, b, lip, c, strict=True):
                al, bl, ll, cl = (mpmath.mpf(float(x)) for x in (al, bl, ll, cl))
                n, d, e = (
                    ll * (al + bl) * n + cl,
                    ll * al * d + ll * bl * n,
                    ll * bl * e + ll * al * n,
                )
            ref_dw = float(mpmath.log10(2 * mpmath.mpf(0.5) * d))
            ref_w0 = float(mpmath.log10(2 * mpmath.mpf(0.5) * e))
        assert abs(r.log10_phi_dW - ref_dw) < 1e-12 * abs(ref_dw)
        assert abs(r.log10_phi_W0 - ref_w0) < 1e-12 * abs(ref_w0)
    assert r.log10_phi_dW > 308 and r.phi_dW == math.inf  # beyond float64, still exact in log10


def test_1000_layers_fast_and_finite():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 10, 1000), rng.uniform(0, 1, 1000)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        r = theorem1(a, b, offsets=0.1)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.010
    assert math.isfinite(r.log10_phi_dW) and r.log10_phi_dW > 308
    assert r.log10_N.shape == (1001,) and np.all(np.isfinite(r.log10_N))


def _act(kind, z, beta):
    return torch.relu(z) + beta if kind == "relu" else z + beta


@pytest.mark.parametrize("kind", ["relu", "affine"])
def test_inequality_on_random_networks(kind):
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        L = 1 + trial % 5
        dims = [int(x) for x in torch.randint(1, 6, (L + 1,), generator=gen)]
        w0 = [
            torch.randn(dims[i + 1], dims[i], generator=gen, dtype=torch.float64) for i in range(L)
        ]
        dw = [
            0.5 * torch.randn(dims[i + 1], dims[i], generator=gen, dtype=torch.float64)
            for i in range(L)
        ]
        beta = [torch.randn(dims[i + 1], generator=gen, dtype=torch.float64) for i in range(L)]
        x = torch.randn(dims[0], generator=gen, dtype=torch.float64)

        def f(ws, x=x, beta=beta):
            h = x
            for w, bt in zip(ws, beta, strict=True):
                h = _act(kind, w @ h, bt)
            return h

        def snorm(m):
            return float(np.linalg.svd(m.numpy(), compute_uv=False)[0])

        r = theorem1(
            [snorm(w) for w in w0],
            [snorm(d) for d in dw],
            offsets=[float(torch.linalg.vector_norm(bt)) for bt in beta],
            input_norm=float(torch.linalg.vector_norm(x)),
        )
        full = f([w + d for w, d in zip(w0, dw, strict=True)])
        slack = 1 + 1e-12
        assert float(torch.linalg.vector_norm(full - f(w0))) <= 10 ** r.log10_D[-1] * slack
        assert float(torch.linalg.vector_norm(full - f(dw))) <= 10 ** r.log10_E[-1] * slack
        assert float(torch.linalg.vector_norm(full)) <= 10 ** r.log10_N[-1] * slack


def test_bad_inputs():
    with pytest.raises(GenboundError, match="at least one layer"):
        theorem1([], [])
    with pytest.raises(GenboundError, match="one value per layer"):
        theorem1([1.0, 2.0], [1.0])
    with pytest.raises(GenboundError, match="finite and >= 0"):
        theorem1([1.0, -2.0], [1.0, 1.0])
    with pytest.raises(GenboundError, match="finite and >= 0"):
        theorem1([1.0], [math.nan])


# -- from a checkpoint ---------------------------------------------------------------------


def test_order_layers():
    names = ["emb", "l.10.q", "l.2.q", "l.2.v", "l.10.v", "l.1.q", "head"]
    assert order_layers(names) == ["emb", "l.1.q", "l.2.q", "l.2.v", "l.10.q", "l.10.v", "head"]


def _checkpoint(tmp_path, with_base=True):
    gen = torch.Generator().manual_seed(0)
    base_state, updates = {}, {}
    file_order = [10, 2, 0, 1, 9, 11]  # not model order
    for i in file_order:
        for mod in ("query", "value"):
            name = f"encoder.layer.{i}.attention.self.{mod}"
            n, m, r = 6, 5, 2
            base_state[f"{name}.weight"] = torch.randn(n, m, generator=gen)
            updates[name] = LowRankUpdate(
                name=name,
                param=f"{name}.weight",
                shape=(n, m),
                B=torch.randn(n, r, generator=gen),
                A=torch.randn(r, m, generator=gen),
                scale=0.5,
            )
    head = torch.randn(3, 5, generator=gen)
    updates["classifier.weight"] = DenseUpdate(
        name="classifier.weight",
        param="classifier.weight",
        shape=(3, 5),
        value=lambda: head,
        new=True,
    )
    bias = torch.randn(3, generator=gen)
    updates["classifier.bias"] = DenseUpdate(
        name="classifier.bias", param="classifier.bias", shape=(3,), value=lambda: bias, new=True
    )
    base = None
    if with_base:
        save_file(base_state, str(tmp_path / "model.safetensors"))
        base = BaseModel(tmp_path)
        updates = {k: dataclasses.replace(u, base=base) for k, u in updates.items()}
    ckpt = Checkpoint(
        path=tmp_path,
        format="genbound",
        variant="lora",
        hparams=Hyperparams(rank=2),
        updates=updates,
        dtype=torch.float32,
        base=base,
    )
    return ckpt, base_state


def test_theorem1_norms_from_checkpoint(tmp_path):
    ckpt, base_state = _checkpoint(tmp_path)
    norms = theorem1_norms(ckpt)
    expected_order = [
        f"encoder.layer.{i}.attention.self.{m}"
        for i in (0, 1, 2, 9, 10, 11)
        for m in ("query", "value")
    ] + ["classifier.weight"]
    assert list(norms.names) == expected_order
    assert norms.skipped == ("classifier.bias",)
    for name, a, b in zip(norms.names, norms.base_norms, norms.update_norms, strict=True):
        u = ckpt.updates[name]
        if name.startswith("classifier"):
            assert a == 0.0
            ref_b = np.linalg.svd(u.value().numpy().astype(np.float64), compute_uv=False)[0]
        else:
            w0 = base_state[f"{name}.weight"].numpy().astype(np.float64)
            assert a == pytest.approx(np.linalg.svd(w0, compute_uv=False)[0], rel=1e-12)
            dw = 0.5 * u.B.numpy().astype(np.float64) @ u.A.numpy().astype(np.float64)
            ref_b = np.linalg.svd(dw, compute_uv=False)[0]
        assert b == pytest.approx(ref_b, rel=1e-12)
    r = theorem1_from_checkpoint(ckpt)
    assert TRANSFORMER_CAVEAT in r.warnings
    # norms measured elsewhere (the spectra stage) give the same result without re-reading W0
    known = {
        n: (a, b) for n, a, b in zip(norms.names, norms.base_norms, norms.update_norms, strict=True)
    }
    assert theorem1_from_checkpoint(ckpt, known=known).log10_phi_dW == r.log10_phi_dW
    assert r.layer_names == norms.names
    direct = theorem1(norms.base_norms, norms.update_norms)
    assert r.log10_phi_dW == direct.log10_phi_dW


def test_theorem1_norms_needs_base(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, with_base=False)
    with pytest.raises(GenboundError, match="needs the base model"):
        theorem1_norms(ckpt)
