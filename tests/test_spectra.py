"""Spectra against dense numpy SVDs, a brute-force intruder count, scipy and the powerlaw package."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import build_peft, tiny_bert

from genbound import load_checkpoint
from genbound.checkpoint import LowRankUpdate, SelectorUpdate
from genbound.spectra import (
    BaseSpectrumCache,
    NotApplicable,
    analyze_spectra,
    compute_base_spectrum,
    count_intruders,
    fit_power_law,
    layer_spectrum,
    top_singular,
)
from genbound.spectra import basecache as basecache_module


def _rand(n, m, seed, scale=1.0):
    return scale * torch.randn(
        n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _decaying(n, m, seed):
    """A matrix with well separated singular values 1, 0.95, 0.95^2, ..."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    r = min(n, m)
    return torch.from_numpy(u[:, :r] @ np.diag(0.95 ** np.arange(r)) @ v[:, :r].T)


def _brute_intruders(w0, w, k, eps):
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    u, s, _ = np.linalg.svd(w, full_matrices=False)
    counts, shares = [], []
    for e in eps:
        flags = []
        for j in range(k):
            best = max(abs(float(np.dot(u[:, j], u0[:, i]))) for i in range(u0.shape[1]))
            flags.append(best < e)
        counts.append(sum(flags))
        total = sum(s[j] ** 2 for j in range(k))
        shares.append(sum(s[j] ** 2 for j in range(k) if flags[j]) / total)
    return counts, shares


def test_rank_measures_and_relative_norms_match_numpy():
    n, m = 40, 30
    w0 = _rand(n, m, 0)
    u = LowRankUpdate(
        name="w", param="w.weight", shape=(n, m), B=_rand(n, 4, 1), A=_rand(4, m, 2), scale=0.3
    )
    base = compute_base_spectrum(w0.float())
    res = layer_spectrum(u, w0.float(), base, k=5)
    dense = u.delta(torch.float64).numpy()
    s = np.linalg.svd(dense, compute_uv=False)
    assert res.spectral_norm == pytest.approx(np.linalg.norm(dense, 2), rel=1e-12)
    assert res.frobenius_norm == pytest.approx(np.linalg.norm(dense, "fro"), rel=1e-12)
    assert res.stable_rank == pytest.approx(
        np.linalg.norm(dense, "fro") ** 2 / np.linalg.norm(dense, 2) ** 2, rel=1e-12
    )
    p = s[:4] / s[:4].sum()
    assert res.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-10)
    w0n = w0.float().double().numpy()
    assert res.relative_spectral == pytest.approx(
        np.linalg.norm(dense, 2) / np.linalg.norm(w0n, 2), rel=1e-6
    )
    assert res.relative_frobenius == pytest.approx(
        np.linalg.norm(dense) / np.linalg.norm(w0n), rel=1e-6
    )
    # principal angles against scipy
    ud = np.linalg.svd(dense)[0][:, :4]
    u0 = np.linalg.svd(w0n)[0][:, :4]
    ref = np.sort(np.cos(scipy.linalg.subspace_angles(ud, u0)))[::-1]
    np.testing.assert_allclose(np.sort(res.principal_cosines)[::-1], ref, atol=1e-6)
    assert isinstance(res.esd, NotApplicable) and "4 nonzero eigenvalues" in res.esd.reason


TOPK_METHODS = [
    (10_000, None, "dense-svd"),
    (0, None, "block-krylov"),
    (0, 10_000, "lanczos-gram"),
    (0, 50, "lanczos-gram"),
]
TOPK_IDS = ["dense", "block-krylov", "lanczos-gram-exact-base", "lanczos-gram-float32-base"]


@pytest.mark.parametrize(
    ("dense_threshold", "exact_threshold", "method"), TOPK_METHODS, ids=TOPK_IDS
)
@pytest.mark.parametrize("shape", [(300, 200), (200, 300)], ids=["n>m", "n<m"])
def test_top_singular_matches_numpy(dense_threshold, exact_threshold, method, shape):
    n, m = shape
    w0 = _decaying(n, m, 0).float()
    u = LowRankUpdate(
        name="w", param="w.weight", shape=(n, m), B=_rand(n, 3, 1), A=_rand(3, m, 2), scale=0.05
    )
    base = compute_base_spectrum(w0, exact_threshold=exact_threshold) if exact_threshold else None
    top = top_singular(w0, u, 10, base=base, dense_threshold=dense_threshold)
    w = w0.double().numpy() + u.delta(torch.float64).numpy()
    uu, ss, _ = np.linalg.svd(w)
    assert top.converged and top.method == method
    np.testing.assert_allclose(top.S, ss[:10], rtol=1e-5)
    cos = np.abs(np.sum(top.U.numpy() * uu[:, :10], axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    assert np.all(top.residuals <= top.tol)


@pytest.mark.parametrize("dense_threshold", [10_000, 0], ids=["dense", "lanczos-gram"])
def test_intruders_match_brute_force(dense_threshold):
    n, m, k = 300, 200, 8
    eps = (0.2, 0.4, 0.5, 0.7, 0.9)
    w0 = _decaying(n, m, 3).float()
    # two strong new directions (intruders) plus a small perturbation
    big = LowRankUpdate(
        name="w", param="w.weight", shape=(n, m), B=_rand(n, 2, 4), A=_rand(2, m, 5), scale=0.2
    )
    base = compute_base_spectrum(w0, exact_threshold=10_000)
    res = layer_spectrum(big, w0, base, k=k, eps=eps, dense_threshold=dense_threshold)
    w = w0.double().numpy() + big.delta(torch.float64).numpy()
    counts, shares = _brute_intruders(w0.double().numpy(), w, k, eps)
    assert res.top.converged and res.top.method == (
        "dense-svd" if dense_threshold else "lanczos-gram"
    )
    assert res.intruders.counts == tuple(counts)
    np.testing.assert_allclose(res.intruders.energy_share, shares, rtol=1e-6, atol=1e-9)
    assert res.intruders.counts[-1] >= 2  # the new directions are found


def test_intruders_for_selector_and_random_level():
    n, m = 50, 30
    w0 = _decaying(n, m, 7).float()
    sel = SelectorUpdate(
        name="w",
        param="w.weight",
        shape=(n, m),
        B=_rand(n, 3, 8, 2.0),
        indices=torch.tensor([1, 4, 9]),
    )
    res = layer_spectrum(sel, w0, compute_base_spectrum(w0), k=5, eps=(0.5,))
    w = w0.double().numpy() + sel.delta(torch.float64).numpy()
    assert res.intruders.counts == tuple(_brute_intruders(w0.double().numpy(), w, 5, (0.5,))[0])
    assert res.intruders.random_level == pytest.approx(np.sqrt(2 * np.log(100) / 50))


@pytest.mark.parametrize("shape", [(300, 500), (500, 300)], ids=["n<=m", "n>m"])
def test_gram_path_of_base_cache_matches_svd(shape):
    w0 = _decaying(*shape, 11).float()
    exact = compute_base_spectrum(w0, exact_threshold=10_000)
    gram = compute_base_spectrum(w0, exact_threshold=100)
    assert exact.method == "svd-float64" and gram.method == "gram-eigh-float32"
    ref_u, ref_s, _ = np.linalg.svd(w0.double().numpy(), full_matrices=False)
    np.testing.assert_allclose(exact.S, ref_s, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gram.S[:50], ref_s[:50], rtol=1e-5)
    assert gram.kept + gram.n_dropped == min(shape)
    # only the smaller side's basis is stored
    assert (exact.U is None) == (gram.U is None) == (shape[0] > shape[1])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((shape[0], 3)))
    for spec, rows in ((exact, exact.kept), (gram, 50)):
        # leading vectors (well separated values) agree up to sign; cosines accurate to 1e-4
        u = spec.left_vectors(w0, 50).numpy()
        np.testing.assert_allclose(np.abs(np.sum(u * ref_u[:, :50], axis=0)), 1.0, atol=1e-4)
        # U0^T x through whichever basis is stored, against numpy's U0 (up to sign)
        got = spec.left_cosines(w0, x).numpy()[:rows]
        ref = ref_u[:, :rows].T @ x.numpy()
        np.testing.assert_allclose(np.abs(got), np.abs(ref), atol=2e-4 * np.abs(ref).max())


def test_cache_is_reused_across_checkpoints(tmp_path, monkeypatch):
    base_dir, adapter_dir, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query", "value"])
    )
    ckpt = load_checkpoint(adapter_dir)
    cache = BaseSpectrumCache(tmp_path / "cache")
    first = analyze_spectra(ckpt, cache=cache, k=4)
    assert first.cache_misses == 4 and first.cache_hits == 0
    files = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 4

    def no_svd(*args, **kwargs):
        raise AssertionError("W0 was decomposed again")

    monkeypatch.setattr(basecache_module, "compute_base_spectrum", no_svd)
    _, adapter2, _ = build_peft(
        tmp_path / "second", tiny_bert, dict(r=3, target_modules=["query", "value"]), seed=5
    )
    second = analyze_spectra(
        load_checkpoint(adapter2, base=base_dir), cache=BaseSpectrumCache(tmp_path / "cache"), k=4
    )
    assert second.cache_misses == 0 and second.cache_hits == 4
    for a, b in zip(first.layers, second.layers, strict=True):
        assert a.base_spectral_norm == b.base_spectral_norm


def test_zero_update_is_empty_not_nan(tmp_path):
    n, m = 30, 20
    w0 = _decaying(n, m, 2).float()
    zero = LowRankUpdate(
        name="w", param="w.weight", shape=(n, m), B=torch.zeros(n, 4), A=_rand(4, m, 1), scale=2.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            res = layer_spectrum(zero, w0, compute_base_spectrum(w0), k=5)
    assert np.all(res.singular_values == 0) and res.spectral_norm == 0 and res.frobenius_norm == 0
    assert res.stable_rank == 0 and res.effective_rank == 0 and res.relative_spectral == 0
    assert res.principal_cosines.size == 0
    assert all(c == 0 for c in res.intruders.counts)


def test_analyze_spectra_on_peft_checkpoint(tmp_path):
    _, adapter_dir, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["value"], modules_to_save=["classifier"])
    )
    ckpt = load_checkpoint(adapter_dir)
    res = analyze_spectra(ckpt, cache=BaseSpectrumCache(None), k=3)
    names = [x.name for x in res.layers]
    assert names == [
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.value",
        "classifier",
    ]
    assert [s for s, _ in res.skipped] == ["classifier.bias"]
    assert res.layer("classifier").unavailable is None  # the head exists in the base model
    for layer in res.layers:
        dense = ckpt.updates[layer.name].delta(torch.float64).numpy()
        np.testing.assert_allclose(
            layer.singular_values,
            np.linalg.svd(dense, compute_uv=False)[: len(layer.singular_values)],
            rtol=1e-10,
        )
    no_base = analyze_spectra(ckpt, use_base=False)
    assert all(x.unavailable == "no base model" and x.intruders is None for x in no_base.layers)


def test_power_law_fit_matches_powerlaw_package_and_brute_force():
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(0)
    lam = (1 - rng.random(400)) ** (-1 / 1.7)  # Pareto, alpha = 2.7
    fit = fit_power_law(np.sqrt(lam))
    assert fit.applicable and fit.n_eigenvalues == 400
    # MLE and KS distance at the chosen xmin, as the powerlaw package computes them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = powerlaw.Fit(lam, xmin=fit.xmin, discrete=False, verbose=False)
    assert fit.alpha == pytest.approx(ref.power_law.alpha, rel=1e-9)
    assert fit.ks_distance == pytest.approx(ref.power_law.D, rel=1e-6)
    # the xmin search, by brute force over every candidate with a tail of >= 50
    x = np.sort(lam)
    best = None
    for i in range(len(x) - 50 + 1):
        tail = x[i:]
        a = 1 + len(tail) / np.sum(np.log(tail / x[i]))
        cdf = 1 - (tail / x[i]) ** (1 - a)
        d = max(
            np.max(np.abs(np.arange(1, len(tail) + 1) / len(tail) - cdf)),
            np.max(np.abs(np.arange(len(tail)) / len(tail) - cdf)),
        )
        if best is None or d < best[0]:
            best = (d, a, x[i])
    assert fit.alpha == pytest.approx(best[1], rel=1e-12) and fit.xmin == best[2]
    assert abs(fit.alpha - 2.7) < 4 * fit.alpha_stderr


def test_power_law_not_applicable_below_threshold():
    res = fit_power_law(np.linspace(1, 2, 64))
    assert (
        isinstance(res, NotApplicable)
        and not res.applicable
        and "64 nonzero eigenvalues" in res.reason
    )


def test_count_intruders_sweep_is_monotone():
    rng = np.random.default_rng(1)
    base_u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    top_u, _ = np.linalg.qr(rng.standard_normal((40, 6)))
    res = count_intruders(base_u, top_u, np.arange(6, 0, -1.0))
    assert list(res.counts) == sorted(res.counts)
    assert res.max_cos.shape == (6,) and np.all(res.max_cos >= 1 / np.sqrt(40) - 1e-12)


def test_layers_on_threads_equal_one_at_a_time(tmp_path):
    _, adapter_dir, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query", "value", "dense"])
    )
    ckpt = load_checkpoint(adapter_dir)
    threads = torch.get_num_threads()
    serial = analyze_spectra(ckpt, cache=BaseSpectrumCache(None), workers=1, k=4)
    pooled = analyze_spectra(ckpt, cache=BaseSpectrumCache(None), workers=2, k=4)
    assert torch.get_num_threads() == threads
    assert [x.name for x in serial.layers] == [x.name for x in pooled.layers]
    for a, b in zip(serial.layers, pooled.layers, strict=True):
        np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-12)
        np.testing.assert_allclose(a.intruders.max_cos, b.intruders.max_cos, atol=1e-10)
        assert a.intruders.counts == b.intruders.counts
        assert a.base_spectral_norm == pytest.approx(b.base_spectral_norm, rel=1e-12)
