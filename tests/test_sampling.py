"""The example sample of curvature and landscapes: seeded, stratified by label, with the
training set's label shares and length distribution, whatever the batching; each example's
loss as it is on its own."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

from genbound.errors import GenboundError
from genbound.report.measures import Measures, _curvature
from genbound.report.writer import curvature_json
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss
from genbound.tasks.sampling import sample_objective, sample_rows, stratified_counts

H = 4
CLASS_SIZES = (300, 200, 100)
MEAN_LENGTH = (8.0, 20.0, 40.0)  # length goes with the label, as in the tweets


class MeanPool(nn.Module):
    """Logits of the masked mean of ``hidden`` (B, T, H): padding changes nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(H, 3).double()

    def forward(self, hidden, attention_mask):
        m = attention_mask[..., None].to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1))


def bucketed(seed: int = 0, batch_size: int = 64, shuffle: bool = False) -> Objective:
    """Cached-activation batches as tasks build them: texts sorted by length, cut into
    batches, each right-padded to its longest row."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(CLASS_SIZES)])
    means = torch.tensor(MEAN_LENGTH)[labels]
    lengths = (means + 4 * torch.randn(len(labels), generator=gen)).round().clamp(2, 60).long()
    rows = [torch.randn(int(n), H, generator=gen, dtype=torch.float64) for n in lengths]
    order = torch.argsort(lengths, stable=True).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        hidden = torch.zeros(len(idx), width, H, dtype=torch.float64)
        mask = torch.zeros(len(idx), width, dtype=torch.int64)
        for j, i in enumerate(idx):
            hidden[j, : lengths[i]] = rows[i]
            mask[j, : lengths[i]] = 1
        batches.append(Batch({"hidden": hidden, "attention_mask": mask}, labels[idx]))
    if shuffle:
        perm = torch.randperm(len(batches), generator=torch.Generator().manual_seed(99))
        batches = [batches[i] for i in perm.tolist()]
    return Objective(MeanPool(), batches, cross_entropy_loss, ("head.weight",), "toy tweets")


def examples(batches):
    """Each example as (its unpadded hidden states' bytes, label) -> length."""
    out = []
    for b in batches:
        lengths = b.inputs["attention_mask"].sum(1)
        for i in range(len(b)):
            row = b.inputs["hidden"][i, : lengths[i]]
            out.append((row.numpy().tobytes(), int(b.labels[i]), int(lengths[i])))
    return out


def test_label_counts_are_the_largest_remainder_shares():
    # 32 of (300, 200, 100): quotas 16, 10.67, 5.33 -> 16, 10, 5 and the remaining one to
    # the largest remainder (class 1)
    labels = np.repeat([0, 1, 2], CLASS_SIZES)
    assert stratified_counts(labels, 32) == {0: 16, 1: 11, 2: 5}
    obj = bucketed()
    total = sum(CLASS_SIZES)
    for n in (7, 32, 100, 256, 599):
        sub, sample = sample_objective(obj, n, seed=0)
        got = Counter(label for _, label, _ in examples(sub.batches))
        assert sub.num_examples == n == sample.examples and sample.total == total
        assert dict(got) == stratified_counts(labels, n) == sample.label_counts
        for c, size in enumerate(CLASS_SIZES):
            assert abs(got[c] / n - size / total) < 1 / n


@pytest.mark.parametrize("n", [32, 128])
def test_lengths_follow_the_training_set(n):
    obj = bucketed()
    lengths = np.array([x[2] for x in examples(obj.batches)])
    for seed in range(5):
        sub, _ = sample_objective(obj, n, seed=seed)
        got = np.array([x[2] for x in examples(sub.batches)])
        assert ks_2samp(got, lengths).pvalue > 0.01
        se = lengths.std(ddof=1) / np.sqrt(n)
        assert abs(got.mean() - lengths.mean()) < 3 * se


def test_each_example_keeps_the_loss_it_has_on_its_own():
    obj = bucketed()
    alone = {}
    with torch.no_grad():
        for key, label, length in examples(obj.batches):
            hidden = torch.from_numpy(
                np.frombuffer(key, dtype=np.float64).reshape(1, length, H).copy()
            )
            b = Batch(
                {"hidden": hidden, "attention_mask": torch.ones(1, length)}, torch.tensor([label])
            )
            alone[key] = float(cross_entropy_loss(obj.model, b)[0])
    sub, _ = sample_objective(obj, 100, seed=1)
    widths = {b.inputs["hidden"].shape[1] for b in sub.batches}
    assert len(widths) > 1  # rows of different batches were re-padded
    seen = 0
    with torch.no_grad():
        for b in sub.batches:
            losses = cross_entropy_loss(obj.model, b)
            assert b.inputs["hidden"].shape[1] == int(b.inputs["attention_mask"].sum(1).max())
            for (key, _, _), loss in zip(examples([b]), losses, strict=True):
                assert float(loss) == pytest.approx(alone[key], rel=1e-12, abs=1e-14)
                seen += 1
    assert seen == 100


def test_seeded_and_independent_of_the_batch_order():
    obj = bucketed()
    a = sample_objective(obj, 50, seed=3)[0]
    b = sample_objective(obj, 50, seed=3)[0]
    c = sample_objective(obj, 50, seed=4)[0]
    shuffled = sample_objective(bucketed(shuffle=True), 50, seed=3)[0]
    content = lambda o: Counter(x[:2] for x in examples(o.batches))  # noqa: E731
    assert content(a) == content(b) == content(shuffled)
    assert content(a) != content(c)
    assert sample_rows(obj.batches, 50, 3) == sample_rows(obj.batches, 50, 3)


def test_every_example_when_n_is_at_least_the_training_set():
    obj = bucketed()
    content = lambda bs: Counter(x[:2] for x in examples(bs))  # noqa: E731
    for n in (600, 1000):
        sub, sample = sample_objective(obj, n, seed=0)
        assert sub.num_examples == 600 and sample.stratified_by is None
        assert content(sub.batches) == content(obj.batches)
        assert "all 600 examples" in sub.description
    with pytest.raises(GenboundError, match="at least 1"):
        sample_objective(obj, 0, seed=0)


def test_plain_tensor_inputs():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    y = (torch.arange(300) % 3 == 0).long()  # a third in class 1
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    batches = [Batch(X[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    obj = Objective(model, batches, cross_entropy_loss, ("0.weight",), "mlp")
    sub, sample = sample_objective(obj, 90, seed=0)
    assert sample.label_counts == {0: 60, 1: 30}
    assert all(isinstance(b.inputs, torch.Tensor) and len(b) <= 64 for b in sub.batches)
    rows = {X[i].numpy().tobytes(): i for i in range(300)}
    with torch.no_grad():
        for b in sub.batches:
            for x, loss in zip(b.inputs, cross_entropy_loss(model, b), strict=True):
                i = rows[x.numpy().tobytes()]
                alone = cross_entropy_loss(model, Batch(X[i : i + 1], y[i : i + 1]))[0]
                assert float(loss) == pytest.approx(float(alone), rel=1e-12)


def test_the_report_records_the_sample():
    obj = bucketed()
    sub, sample = sample_objective(obj, 40, seed=2)
    assert sub.description == (
        "toy tweets, 40 of 600 examples, a random sample stratified by label (seed 2)"
    )
    cv = _curvature(sub, "factors", 0, 6, 2, 4, sample)
    doc = json.loads(json.dumps(curvature_json(Measures(spectra=None, curvature=cv))))
    assert doc["examples"] == 40
    assert doc["sample"] == {
        "examples": 40,
        "total": 600,
        "seed": 2,
        "stratified_by": "label",
        "label_counts": {"0": 20, "1": 13, "2": 7},
    }


def test_left_padded_rows_keep_their_padding_and_losses():
    """Rows without a right-padded mask are taken as they are (with their batch's padding),
    stacked with rows of the same width; the draw still ignores the padding."""
    obj = bucketed()
    moved = []
    for b in obj.batches:  # the same rows, left-padded: padding first
        lengths = b.inputs["attention_mask"].sum(1)
        shift = [int(b.inputs["attention_mask"].shape[1] - n) for n in lengths]
        moved.append(
            Batch(
                {k: torch.stack([v[i].roll(s, 0) for i, s in enumerate(shift)])
                 for k, v in b.inputs.items()},
                b.labels,
            )
        )  # fmt: skip
    left = Objective(obj.model, moved, cross_entropy_loss, obj.trainable, "left")
    sub, sample = sample_objective(left, 60, seed=5)
    right, _ = sample_objective(obj, 60, seed=5)
    assert sub.num_examples == 60 and sample.label_counts == stratified_counts(
        np.repeat([0, 1, 2], CLASS_SIZES), 60
    )
    with torch.no_grad():
        got = sorted(float(x) for b in sub.batches for x in cross_entropy_loss(obj.model, b))
        ref = sorted(float(x) for b in right.batches for x in cross_entropy_loss(obj.model, b))
    np.testing.assert_allclose(got, ref, rtol=1e-12)  # the same examples (mean pooling)


def test_analysis_batches_shrink_for_large_models():
    """1,024 padded tokens per batch up to 300 million parameters, then halving (a power
    of two, at least 128)."""
    from genbound.tasks.sampling import analysis_batch_tokens

    class Sized(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(n, device="meta"))

    cases = (
        (10**6, 1024),
        (3 * 10**8, 1024),
        (6 * 10**8, 512),
        (11 * 10**8, 256),
        (7 * 10**9, 128),
    )
    for params, tokens in cases:
        assert analysis_batch_tokens(Sized(params)) == tokens
