"""The variant registry: counts per THEORY.md section 1, written out independently here."""

from __future__ import annotations

import pytest

from genbound.adapters import get_variant, variants
from genbound.errors import GenboundError

# (variant, n, m, r, k) -> D, computed by hand from the table in THEORY.md section 1
EXPECTED = {
    ("lora", 768, 768, 16, 1): 16 * (768 + 768),
    ("lora_plus", 100, 40, 4, 1): 4 * 140,
    ("asym", 100, 40, 4, 1): 400,
    ("cla", 100, 40, 4, 1): 400,
    ("random_cla", 100, 40, 4, 1): 400,
    ("paca", 100, 40, 4, 1): 400,
    ("cola", 100, 40, 4, 3): 3 * 4 * 140,
    ("cola", 10, 8, 4, 3): 80,  # capped at m n
    ("rac", 100, 40, 4, 3): 1200,
    ("rac", 10, 8, 4, 3): 80,
    ("c3la", 100, 40, 4, 3): 100 * 12,
    ("c3la", 100, 40, 4, 20): 100 * 40,  # windows cannot exceed m columns
    ("random_c3la", 100, 40, 4, 3): 1200,
    ("dora", 100, 40, 4, 1): 4 * 140 + 100,
    ("vera", 100, 40, 4, 1): 104,
    ("fft", 100, 40, 4, 1): 4000,
    ("head", 100, 40, 4, 1): 0,
}


@pytest.mark.parametrize("key", list(EXPECTED))
def test_counts(key):
    name, n, m, r, k = key
    assert get_variant(name).trainable_per_layer(n, m, r, k) == EXPECTED[key]


def test_registry_is_complete():
    assert set(variants()) == {
        "fft", "head", "lora", "lora_plus", "asym", "cola", "rac", "cla",
        "random_cla", "c3la", "random_c3la", "paca", "dora", "vera",
    }  # fmt: skip
    paper = {v.name for v in variants().values() if v.in_paper_table}
    assert paper == {"lora", "lora_plus", "asym", "cola", "rac", "cla", "paca", "c3la"}


def test_unknown_variant_and_bad_shapes():
    with pytest.raises(GenboundError, match=r"unknown adapter variant 'magic'.*lora"):
        get_variant("magic")
    with pytest.raises(ValueError, match="needs a rank"):
        get_variant("lora").trainable_per_layer(4, 4)
    with pytest.raises(ValueError, match="positive"):
        get_variant("lora").trainable_per_layer(0, 4, 2)
