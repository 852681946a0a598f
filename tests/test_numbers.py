"""genbound.numbers: one way to print numbers, never a value that looks clipped."""

from __future__ import annotations

import math

import pytest

from genbound.numbers import format_count, format_number, format_pm, format_probability


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.9999999978, "1 - 2.2e-9"),
        (0.99996, "1 - 4e-5"),
        (0.9999331262618011, "0.9999"),
        (1.0, "1.0000"),
        (0.0, "0.0000"),
        (3e-12, "3e-12"),
        (0.39375, "0.3937"),
        (1.00000002, "1 + 2e-8"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (None, "—"),
    ],
)
def test_probability_never_rounds_onto_0_or_1(value, text):
    assert format_probability(value) == text


def test_the_printed_distance_to_one_is_the_value_s():
    for p in (0.9999999978, 0.99999, 1 - 3.3e-16, 0.999951):
        text = format_probability(p)
        assert text.startswith("1 - ")
        assert float(text[4:]) == pytest.approx(1 - p, rel=0.05)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1155, "1,155"),
        (1155.0, "1,155"),
        (111747, "111,747"),
        (14979.4, "14,979"),
        (0.06458333, "0.06458"),
        (-0.04948654, "-0.04949"),
        (8.94754152, "8.948"),
        (0.9999999978, "1 - 2.2e-9"),
        (-0.99999999, "-1 + 1e-8"),
        (2.2e-9, "2.2e-9"),
        (True, "True"),
        ("lora", "lora"),
        (None, "—"),
        (-math.inf, "-inf"),
    ],
)
def test_number(value, text):
    assert format_number(value) == text


def test_counts_and_plus_minus():
    assert format_count(1155) == "1,155" and format_count(111747.0) == "111,747"
    assert format_pm(0.15833, 0.06413) == "0.1583 ± 0.0641"
