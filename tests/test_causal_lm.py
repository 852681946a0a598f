"""The causal-LM task against plain torch + peft: the token-weighted gap of a merged LoRA
model (whole texts and prompt/response pairs, Llama and GPT-2 shapes, adapters trained by
the Trainer and by a plain loop), computed text by text and in left- and right-padded
batches; ratio-estimator standard errors; chunked and smoothed losses; the objective's
gradient; the objective inferred from a checkpoint; the model left as found."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import build_peft, tiny_bert
from helpers import assert_rel_close
from lm_fixtures import (
    QUERY_WEIGHT,
    assert_decisions_well_posed,
    base_tokenizer,
    encode,
    lm_bundle,
    max_length_of,
    merged_model,
    reference,
    reference_padded,
)

from genbound.checkpoint import load_checkpoint
from genbound.errors import GenboundError
from genbound.gap import empirical_gap, score_units
from genbound.tasks.causal_lm import CausalLMTask, LMScorer
from genbound.tasks.lm_texts import LMTexts
from genbound.tasks.text_data import TextData, infer_objective

KINDS = ("llama", "gpt2")
FORMS = ("text", "pair")
SMOOTHING = (0.05, 0.5, 1.0)


@pytest.fixture(scope="session", params=KINDS)
def bundle(request, tmp_path_factory):
    return lm_bundle(tmp_path_factory, request.param)


# ---------------------------------------------------------------- genbound's side
def lm_texts(rows, form: str, source: str) -> LMTexts:
    if form == "text":
        return LMTexts(tuple(r["text"] for r in rows), None, source)
    return LMTexts(tuple(r["response"] for r in rows), tuple(r["prompt"] for r in rows), source)


def task_of(bundle, form: str, **kwargs) -> CausalLMTask:
    return CausalLMTask(
        lm_texts(bundle.train_rows, form, "train"),
        lm_texts(bundle.test_rows, form, "test"),
        base_path=bundle.base,
        **kwargs,
    )


def checkpoint_of(bundle):
    return load_checkpoint(bundle.adapter, base=bundle.base)


def batch_keys(batch) -> list[tuple]:
    """(token ids, first predicted position) of each text of a genbound batch."""
    inp, keys = batch.inputs, []
    for row in range(len(batch)):
        n = int(inp["attention_mask"][row].sum())
        assert inp["attention_mask"][row, :n].all()  # right-padded
        keys.append(
            (tuple(inp["input_ids"][row, :n].tolist()), inp["loss_mask"][row].tolist().index(1))
        )
    return keys


def units_of(objective) -> dict[tuple, list[tuple[float, float, float]]]:
    """genbound's per-text (loss, error, weight), keyed by :func:`batch_keys`."""
    s = score_units(objective)
    keys = [k for b in objective.batches for k in batch_keys(b)]
    out: dict[tuple, list] = {}
    for key, loss, err, w in zip(keys, s.losses, s.errors, s.weights, strict=True):
        out.setdefault(key, []).append((float(loss), float(err), float(w)))
    return out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------- the gap
@pytest.mark.parametrize("form", FORMS)
def test_gap_equals_plain_torch_and_peft_token_by_token(bundle, form):
    ckpt = checkpoint_of(bundle)
    train, test = task_of(bundle, form).objectives(ckpt)
    gap = empirical_gap(train, test)
    for split, rows, objective in (
        (gap.train, bundle.train_rows, train),
        (gap.test, bundle.test_rows, test),
    ):
        ref = reference(bundle, rows, form)
        # padding on either side changes no token's loss
        for side in ("left", "right"):
            for a, b in zip(reference_padded(bundle, rows, form, side), ref, strict=True):
                assert a.key == b.key
                np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
                np.testing.assert_array_equal(a.errors, b.errors)
        # per text: genbound's mean token loss, error rate and predicted tokens
        assert_decisions_well_posed(ref)
        got = units_of(objective)
        assert sum(len(v) for v in got.values()) == len(ref) == len(rows)
        for r in ref:
            loss, err, w = got[r.key][0]
            assert w == len(r.losses) == len(r.ids) - r.start > 0
            assert rel(loss, r.losses.mean()) < 1e-5, (loss, r.losses.mean())
            assert err == r.errors.mean()
        # the split's token-weighted and per-text means
        tokens = np.concatenate([r.losses for r in ref])
        errors = np.concatenate([r.errors for r in ref])
        assert split.n == len(rows) and split.n_tokens == tokens.size
        assert rel(split.loss, tokens.mean()) < 1e-5
        assert rel(split.error, errors.mean()) < 1e-12
        assert rel(split.unit_loss, np.mean([r.losses.mean() for r in ref])) < 1e-5
        assert rel(split.unit_error, np.mean([r.errors.mean() for r in ref])) < 1e-12
        assert rel(split.max_loss, max(r.losses.mean() for r in ref)) < 1e-5
        assert 0 < split.error < 1  # some tokens right, some wrong: the error is tested
    # the gap: test minus train of the means checked above
    assert abs(gap.loss_gap - (gap.test.loss - gap.train.loss)) < 1e-12
    assert abs(gap.error_gap - (gap.test.error - gap.train.error)) < 1e-12
    assert gap.loss_unit == "nats/token" and gap.unit == "texts"
    assert gap.weight_unit == "predicted tokens"


def test_prompt_tokens_are_not_scored(bundle):
    """The pair form scores fewer tokens than the whole text of the same words: fewer by
    the prompt's own tokens (without the special tokens the tokenizer adds)."""
    tok = base_tokenizer(bundle)
    train, _ = task_of(bundle, "pair").objectives(checkpoint_of(bundle))
    got = units_of(train)
    for r in bundle.train_rows:
        full = tok(r["prompt"] + r["response"])["input_ids"]
        prompt = [t for t in tok(r["prompt"])["input_ids"] if t not in tok.all_special_ids]
        ((_, _, w),) = got[(tuple(full), 1 + len(prompt))]
        assert w == len(full) - 1 - len(prompt)


def test_truncated_texts_are_scored_as_cut(bundle, caplog):
    """With max_length L below the texts' lengths each text keeps its first L tokens (as
    the tokenizer cuts them) and the cut is logged with its count."""
    length = 12
    tok = base_tokenizer(bundle)
    cut = sum(len(tok(r["text"])["input_ids"]) > length for r in bundle.train_rows)
    assert cut > 0
    with caplog.at_level("WARNING", logger="genbound.tasks.causal_lm"):
        train, _ = task_of(bundle, "text", max_length=length).objectives(checkpoint_of(bundle))
    assert f"train: {cut} of {len(bundle.train_rows)} texts are longer than max_length = " in (
        caplog.text
    )
    ref = reference(bundle, bundle.train_rows, "text", max_length=length)
    got = units_of(train)
    for r in ref:
        assert len(r.ids) <= length
        loss, _, w = got[r.key][0]
        assert w == len(r.ids) - 1 and rel(loss, r.losses.mean()) < 1e-5


# ---------------------------------------------------------------- standard errors
def _ratio_stderr(values: np.ndarray, weights: np.ndarray) -> float:
    n = values.size
    m = (weights * values).sum() / weights.sum()
    return math.sqrt(((weights * (values - m)) ** 2).sum() / (n * (n - 1))) / weights.mean()


@pytest.mark.parametrize("form", FORMS)
def test_standard_errors_are_the_ratio_estimators(bundle, form):
    train, test = task_of(bundle, form).objectives(checkpoint_of(bundle))
    gap = empirical_gap(train, test)
    for split, rows, objective in (
        (gap.train, bundle.train_rows, train),
        (gap.test, bundle.test_rows, test),
    ):
        # from the reference's per-text sums
        ref = reference(bundle, rows, form)
        w = np.array([r.losses.size for r in ref], dtype=np.float64)
        losses = np.array([r.losses.sum() for r in ref]) / w
        errors = np.array([r.errors.sum() for r in ref]) / w
        assert rel(split.loss_stderr, _ratio_stderr(losses, w)) < 1e-5
        assert rel(split.error_stderr, _ratio_stderr(errors, w)) < 1e-10
        # from genbound's own per-text values: the formula to rounding
        s = score_units(objective)
        assert rel(split.loss_stderr, _ratio_stderr(s.losses, s.weights)) < 1e-12
    assert rel(gap.loss_gap_stderr, math.hypot(gap.train.loss_stderr, gap.test.loss_stderr)) < 1e-12


# ---------------------------------------------------------------- chunks and smoothing
@pytest.mark.parametrize("form", FORMS)
def test_chunked_losses_equal_unchunked_and_smoothing_equals_direct(bundle, form):
    ckpt = checkpoint_of(bundle)
    plain, _ = task_of(bundle, form).objectives(ckpt)
    chunked, _ = task_of(bundle, form, chunk_tokens=3).objectives(ckpt)
    a, b = score_units(plain), score_units(chunked)
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-6)
    np.testing.assert_array_equal(b.errors, a.errors)
    np.testing.assert_array_equal(b.weights, a.weights)

    ref = {r.key: r for r in reference(bundle, bundle.train_rows, form)}
    vocab = merged_model(bundle).config.vocab_size
    scorer = LMScorer(chunk_tokens=3)
    seen = 0
    with torch.no_grad():
        for batch in chunked.batches:
            t = scorer.token_losses(chunked.model, batch, smoothing=SMOOTHING)
            assert t.smoothed_bits_sum.shape == (len(batch), len(SMOOTHING))
            for row, key in enumerate(batch_keys(batch)):
                r = ref[key]
                for j, alpha in enumerate(SMOOTHING):
                    direct = -np.log2((1 - alpha) * r.probs + alpha / vocab).sum()
                    assert rel(float(t.smoothed_bits_sum[row, j]), direct) < 1e-5, alpha
                assert rel(float(t.loss_sum[row]), r.losses.sum()) < 1e-5
                seen += 1
    assert seen == len(bundle.train_rows)


# ---------------------------------------------------------------- the gradient
def test_objective_gradient_equals_autograd_of_the_merged_model(bundle):
    train, _ = task_of(bundle, "text").objectives(checkpoint_of(bundle))
    assert len(train.batches) == 1
    (batch,) = train.batches
    name = QUERY_WEIGHT[bundle.kind]
    assert name in train.trainable
    param = dict(train.model.named_parameters())[name]
    was = param.requires_grad
    param.requires_grad_(True)
    try:
        loss = train.weighted_sum(train.loss(train.model, batch), batch) / train.total_weight
        (grad,) = torch.autograd.grad(loss, param)
    finally:
        param.requires_grad_(was)

    model = merged_model(bundle)
    ref_param = dict(model.named_parameters())[name]
    tok = base_tokenizer(bundle)
    enc = encode(tok, bundle.train_rows, "text", max_length_of(tok, model))
    width = max(len(ids) for ids, _ in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(enc), width), dtype=torch.int64)
    for i, (x, _) in enumerate(enc):
        ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    ref_param.requires_grad_(True)  # peft froze the base's weights
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        (want,) = torch.autograd.grad(ce, ref_param)
    finally:
        ref_param.requires_grad_(False)
    assert rel(float(loss.detach()), float(ce.detach())) < 1e-5
    assert_rel_close(grad, want, 1e-5, what=name)


# ---------------------------------------------------------------- the objective inferred
def _edit_json(path, **changes):
    doc = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(json.dumps(doc))


def test_objective_is_inferred_from_task_type_then_architectures(bundle, tmp_path):
    kind, where = infer_objective(checkpoint_of(bundle))
    assert kind == "causal_lm" and "task_type" in where
    plain = tmp_path / "no-task-type"
    shutil.copytree(bundle.adapter, plain)
    _edit_json(plain / "adapter_config.json", task_type=None)
    ckpt = load_checkpoint(plain, base=bundle.base)
    kind, where = infer_objective(ckpt)
    arch = json.loads((bundle.base / "config.json").read_text())["architectures"][0]
    assert arch == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[bundle.kind]
    assert kind == "causal_lm" and repr(arch) in where
    data = TextData(str(bundle.train_file), str(bundle.test_file))
    assert data.resolve(ckpt)[0] == "causal_lm"
    assert isinstance(data.for_checkpoint(ckpt), CausalLMTask)


def test_causal_lm_objective_refused_for_a_seq_cls_adapter(tmp_path):
    _, adapter, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query"], task_type="SEQ_CLS")
    )
    ckpt = load_checkpoint(adapter)
    assert infer_objective(ckpt)[0] == "sequence_classification"
    assert TextData("a.jsonl", "b.jsonl").resolve(ckpt)[0] == "sequence_classification"
    with pytest.raises(GenboundError, match="--objective causal_lm, but") as err:
        TextData("a.jsonl", "b.jsonl", objective="causal_lm").resolve(ckpt)
    assert str(adapter) in str(err.value)


def test_causal_lm_objective_refused_for_a_trained_classifier_head(tmp_path):
    """Neither task_type nor the base's architectures say classification; the trained
    head does."""
    base, adapter, _ = build_peft(
        tmp_path, tiny_bert, dict(r=2, target_modules=["query"], modules_to_save=["classifier"])
    )
    _edit_json(adapter / "adapter_config.json", task_type=None)
    _edit_json(base / "config.json", architectures=None)
    ckpt = load_checkpoint(adapter, base=base)
    assert infer_objective(ckpt) == (None, "")
    with pytest.raises(GenboundError, match="trains a classification head") as err:
        TextData("a.jsonl", "b.jsonl", objective="causal_lm").resolve(ckpt)
    assert str(adapter) in str(err.value)


# ---------------------------------------------------------------- the model as found
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gap_leaves_the_model_as_found(bundle, mode):
    train, test = task_of(bundle, "text").objectives(checkpoint_of(bundle))
    model = train.model
    before = empirical_gap(train, test)  # in eval mode, as built
    getattr(model, mode)()
    names = [n for n, _ in model.named_parameters()]
    name = QUERY_WEIGHT[bundle.kind]
    dict(model.named_parameters())[name].requires_grad_(mode == "train")
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    after = empirical_gap(train, test)
    assert [n for n, _ in model.named_parameters()] == names
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), values[n]), n
        assert p.requires_grad == grads[n] and p.grad is None, n
    assert {n: m.training for n, m in model.named_modules()} == modes
    # scored in eval mode either way (GPT-2's dropout would change a train-mode score)
    assert after == before
