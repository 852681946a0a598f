"""The W0 spectrum cache verifies every entry it reads: a corrupt, wrongly shaped or tampered
entry is reported in a warning, recomputed and replaced; temporary files a killed writer left
are removed once they are old."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import torch

from genbound.spectra import basecache
from genbound.spectra.basecache import (
    STALE_TEMP_SECONDS,
    BaseSpectrumCache,
    content_key,
    read_entry,
)

SHAPES = {"wide": (30, 45), "tall": (45, 30)}


def _w0(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _assert_is_spectrum_of(spec, w0: torch.Tensor, rtol: float) -> None:
    """S against numpy's SVD of W0 (float64); the stored basis spans numpy's singular
    vectors (each column matches up to sign)."""
    w = w0.double().numpy()
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(spec.S, s, rtol=rtol, atol=rtol * s[0])
    n, m = w.shape
    basis = spec.small_side_basis(n, m)
    ref = u if n <= m else vh.T
    k = min(n, m) // 2  # well-separated leading directions of a Gaussian matrix
    np.testing.assert_allclose(np.abs(np.sum(basis[:, :k] * ref[:, :k], axis=0)), 1.0, atol=1e-4)


def _fresh_entry(tmp_path, shape, **kw):
    w0 = _w0(shape)
    cache = BaseSpectrumCache(tmp_path / "cache", **kw)
    cache.get(w0)
    path = cache._path(content_key(w0))
    assert path.exists()
    return w0, path


def _resave(path, change) -> None:
    """Rewrite an entry with ``change(arrays)`` applied, keeping every other stored field
    (the checksum included) as it was."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def _empty(path):
    path.write_bytes(b"")


def _not_a_zip(path):
    path.write_bytes(os.urandom(300))


def _double_s(path):
    _resave(path, lambda a: a.update(S=2 * a["S"]))


def _wrong_vectors_shape(path):
    def change(a):
        name = "U" if "U" in a else "V"
        a[name] = a[name][:-1]

    _resave(path, change)


def _wrong_vectors_shape_resummed(path):
    def change(a):
        name = "U" if "U" in a else "V"
        a[name] = a[name][:-1]
        a["checksum"] = np.array(basecache.entry_checksum(a))

    _resave(path, change)


def _old_format_wrong_shape(path):
    """An entry of the previous format (no checksum, no shape) whose vectors do not fit."""
    with np.load(path) as z:
        name = "U" if "U" in z.files else "V"
        vec = z[name]
        arrays = {"S": z["S"][:-3], "method": z["method"], "n_dropped": z["n_dropped"]}
    arrays[name] = vec[:-3, :-3]
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _entry_of_another_shape(path):
    """A well-formed entry, checksum and all, written for another W0 at this key."""
    key = path.stem
    other = _w0((20, 20), seed=3)
    spec = basecache.compute_base_spectrum(other, key=key)
    basecache.write_entry(path, spec, (20, 20))


def _double_s_resummed(path):
    def change(a):
        a["S"] = 2 * a["S"]
        a["checksum"] = np.array(basecache.entry_checksum(a))

    _resave(path, change)


def _unknown_method(path):
    def change(a):
        a["method"] = np.array("magic")
        a["checksum"] = np.array(basecache.entry_checksum(a))

    _resave(path, change)


def _nan_in_s(path):
    def change(a):
        a["S"] = a["S"].copy()
        a["S"][2] = np.nan
        a["checksum"] = np.array(basecache.entry_checksum(a))

    _resave(path, change)


def _swapped_vectors_resummed(path):
    """The top two singular vectors swapped (still orthonormal), checksum redone: only W0
    itself can tell."""

    def change(a):
        name = "U" if "U" in a else "V"
        vec = a[name].copy()
        vec[:, [0, 1]] = vec[:, [1, 0]]
        a[name] = vec
        a["checksum"] = np.array(basecache.entry_checksum(a))

    _resave(path, change)


CORRUPTIONS = {
    "truncated": (_truncate, "unreadable"),
    "garbled": (_garble, "unreadable"),
    "empty": (_empty, "unreadable: EOFError"),
    "not a zip": (_not_a_zip, "unreadable"),
    "doubled S": (_double_s, "checksum"),
    "doubled S, checksum redone": (_double_s_resummed, "Frobenius"),
    "wrong vector shape": (_wrong_vectors_shape, "checksum"),
    "wrong vector shape, checksum redone": (_wrong_vectors_shape_resummed, "of shape"),
    "old format": (_old_format_wrong_shape, "fields missing"),
    "another W0's entry": (_entry_of_another_shape, "not of a W0 of shape"),
    "unknown method": (_unknown_method, "unknown method 'magic'"),
    "NaN in S": (_nan_in_s, "non-finite values"),
    "vectors swapped, checksum redone": (_swapped_vectors_resummed, "singular vectors of W0"),
}


@pytest.mark.parametrize("orientation", list(SHAPES))
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_bad_entry_is_recomputed_and_replaced(tmp_path, caplog, orientation, corruption):
    shape = SHAPES[orientation]
    w0, path = _fresh_entry(tmp_path, shape)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(path)

    cache = BaseSpectrumCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="genbound.spectra.basecache"):
        spec = cache.get(w0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and reason in warnings[0], warnings[0]
    assert cache.misses == 1 and cache.hits == 0
    _assert_is_spectrum_of(spec, w0, rtol=1e-10)

    # the entry on disk was replaced by a valid one: read back without recomputing
    read_entry(path, content_key(w0), w0)
    again = BaseSpectrumCache(tmp_path / "cache")
    caplog.clear()
    reread = again.get(w0)
    assert again.hits == 1 and again.misses == 0 and not caplog.records
    np.testing.assert_array_equal(reread.S, spec.S)


def test_gram_entries_are_verified_too(tmp_path, caplog):
    w0, path = _fresh_entry(tmp_path, (45, 30), exact_threshold=10)
    _double_s(path)
    cache = BaseSpectrumCache(tmp_path / "cache", exact_threshold=10)
    with caplog.at_level(logging.WARNING, logger="genbound.spectra.basecache"):
        spec = cache.get(w0)
    assert spec.method == "gram-eigh-float32" and "checksum" in caplog.text
    _assert_is_spectrum_of(spec, w0, rtol=1e-5)
    assert read_entry(path, content_key(w0), w0).method == "gram-eigh-float32"


def test_peek_drops_a_bad_entry_and_computes_nothing(tmp_path, caplog, monkeypatch):
    w0, path = _fresh_entry(tmp_path, (30, 45))
    _double_s(path)

    def no_svd(*args, **kwargs):
        raise AssertionError("peek computed a spectrum")

    monkeypatch.setattr(basecache, "compute_base_spectrum", no_svd)
    cache = BaseSpectrumCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="genbound.spectra.basecache"):
        assert cache.peek(w0) is None
    assert "checksum" in caplog.text and not path.exists()
    caplog.clear()
    assert cache.peek(w0) is None and not caplog.records  # warned once, not at every peek


def test_stale_temporary_files_are_removed_fresh_ones_kept(tmp_path, caplog):
    w0, path = _fresh_entry(tmp_path, (30, 45))
    key = content_key(w0)
    stale = path.parent / f".{key}.k1ll3d.npz"
    stale.write_bytes(b"")  # a writer killed right after creating its file
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    fresh = path.parent / f".{key}.wr1t1ng.npz"  # another process writing now
    fresh.write_bytes(b"PK")
    unrelated = path.parent / "notes.npz"
    unrelated.write_bytes(b"")
    os.utime(unrelated, (old, old))

    cache = BaseSpectrumCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="genbound.spectra.basecache"):
        spec = cache.get(w0)
    assert not stale.exists() and fresh.exists() and unrelated.exists()
    assert str(stale) in caplog.text and "interrupted" in caplog.text
    assert cache.hits == 1
    _assert_is_spectrum_of(spec, w0, rtol=1e-10)


def test_unwritable_cache_warns_and_still_answers(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    w0 = _w0((30, 45))
    cache = BaseSpectrumCache(blocker)
    with caplog.at_level(logging.WARNING, logger="genbound.spectra.basecache"):
        spec = cache.get(w0)
    assert "cannot store" in caplog.text
    _assert_is_spectrum_of(spec, w0, rtol=1e-10)
