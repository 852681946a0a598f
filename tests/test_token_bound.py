"""The token- and document-level compression bounds of a causal LM, recomputed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from genbound.bounds.compression import code_length, quantize
from genbound.bounds.token_level import (
    ALPHAS,
    TrainScores,
    smoothed_floor_bits,
    smoothed_range_bits,
    token_level_bound,
)
from genbound.errors import GenboundError


def kl_inverse_ref(q: float, c: float) -> float:
    """max p in [q, 1] with kl(q || p) <= c, by scipy's root finder (independent of
    genbound.bounds.kl)."""

    def kl(p):
        a = q * math.log(q / p) if q > 0 else 0.0
        b = (1 - q) * math.log((1 - q) / (1 - p)) if q < 1 else 0.0
        return a + b

    if q >= 1.0 or kl(1 - 1e-15) <= c:
        return 1.0
    return optimize.brentq(lambda p: kl(p) - c, q, 1 - 1e-15, xtol=1e-14)


def fake_scores(tensors, alphas, v, m=5000, n=60):
    """Deterministic scores that grow worse as the code gets coarser (fewer distinct
    values), so different b win different bounds."""
    distinct = len(torch.unique(torch.cat([t.reshape(-1) for t in tensors.values()])))
    worse = 1.0 / math.log2(distinct + 1)
    return TrainScores(
        tokens=m,
        texts=n,
        smoothed_bits=tuple(smoothed_floor_bits(a, v) + 3.0 * worse + a for a in alphas),
        error=min(0.2 + worse, 1.0),
        doc_smoothed_bits=tuple(smoothed_floor_bits(a, v) + 2.5 * worse + a for a in alphas),
        doc_error=min(0.15 + worse, 1.0),
    )


def brute_force(tensors, v, bits, alphas, delta, m=5000, n=60):
    """Every (b, a) evaluated, each bound written out from the module's formulas."""
    nb, na = len(bits), len(alphas)
    best = {"tok": math.inf, "err": math.inf, "doc": math.inf, "derr": math.inf}
    for b in bits:
        q = quantize(tensors, b)
        k = code_length(q).total_bits
        s = fake_scores(q.tensors(), alphas, v, m, n)
        for i, a in enumerate(alphas):
            width = math.log2(1 + (1 - a) * v / a)
            tok = s.smoothed_bits[i] + width * math.sqrt(
                (k * math.log(2) + math.log(nb * na / delta)) / (2 * m)
            )
            rhs = (k * math.log(2) + math.log(2 * math.sqrt(n) / delta) + math.log(nb * na)) / n
            low = -math.log2(1 - a + a / v)
            doc = low + width * kl_inverse_ref((s.doc_smoothed_bits[i] - low) / width, rhs)
            best["tok"] = min(best["tok"], tok)
            best["doc"] = min(best["doc"], doc)
        err = s.error + math.sqrt((k * math.log(2) + math.log(nb / delta)) / (2 * m))
        erhs = (k * math.log(2) + math.log(2 * math.sqrt(n) / delta) + math.log(nb)) / n
        best["err"] = min(best["err"], err)
        best["derr"] = min(best["derr"], kl_inverse_ref(s.doc_error, erhs))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_equal_brute_force_over_every_candidate(seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = {"a": torch.randn(40, 8, generator=gen), "b": torch.randn(8, 30, generator=gen)}
    v, bits, alphas, delta = 30_522, (1, 2, 3, 5, 8), (0.001, 0.05, 0.1, 0.5), 0.05
    calls = []

    def evaluate(q):
        calls.append(1)
        return fake_scores(q, alphas, v)

    r = token_level_bound(tensors, evaluate, vocab_size=v, bits=bits, alphas=alphas, delta=delta)
    ref = brute_force(tensors, v, bits, alphas, delta)
    assert r.token_bits.bound == pytest.approx(ref["tok"], rel=1e-12)
    assert r.token_error.bound == pytest.approx(ref["err"], rel=1e-12)
    assert r.doc_bits.bound == pytest.approx(ref["doc"], rel=1e-9)
    assert r.doc_error.bound == pytest.approx(ref["derr"], rel=1e-9)
    assert r.n_tokens == 5000 and r.n_texts == 60
    assert 1 <= len(calls) <= len(bits)
    # the pieces add up: bound = train + complexity
    for x in (r.token_bits, r.token_error, r.doc_bits, r.doc_error):
        assert x.bound == pytest.approx(x.train + x.complexity, rel=1e-12)


def test_ranges_and_floors():
    v = 32_000
    for a in ALPHAS:
        # the smoothed NLL of any p in [0, 1] lies in [floor, range]
        p = np.linspace(0, 1, 1001)
        nll = -np.log2((1 - a) * p + a / v)
        assert nll.min() == pytest.approx(smoothed_floor_bits(a, v), abs=1e-12)
        assert nll.max() - nll.min() == pytest.approx(smoothed_range_bits(a, v), rel=1e-12)


def test_pruned_candidates_could_not_win():
    """A candidate left unevaluated has floors (p = 1 on every token) no better than the
    best bounds found: evaluating it with perfect scores would not change the result."""
    gen = torch.Generator().manual_seed(3)
    tensors = {"w": torch.randn(200, 50, generator=gen)}
    v, alphas = 1000, (0.01, 0.1)
    r = token_level_bound(
        tensors, lambda q: fake_scores(q, alphas, v, m=400, n=10), vocab_size=v, alphas=alphas
    )
    skipped = [c for c in r.candidates if c.scores is None]
    assert skipped, "expected pruning at this K and m"
    assert any(c.scores is not None for c in r.candidates)


def test_bad_arguments():
    t = {"w": torch.ones(3, 3)}
    with pytest.raises(GenboundError, match="smoothing"):
        token_level_bound(t, lambda q: None, vocab_size=10, alphas=(0.0,))
    with pytest.raises(GenboundError, match="vocab_size"):
        token_level_bound(t, lambda q: None, vocab_size=1)
    with pytest.raises(GenboundError, match="delta"):
        token_level_bound(t, lambda q: None, vocab_size=10, delta=1.5)


def test_alpha_grid_is_paid():
    """A grid of one smoothing level pays less than a grid of eight: with the same scores
    at that level the bound is lower by the ln 8 in the union bound."""
    t = {"w": torch.randn(10, 10, generator=torch.Generator().manual_seed(0))}
    v = 500

    def ev(alphas):
        return lambda q: fake_scores(q, alphas, v)

    one = token_level_bound(t, ev((0.1,)), vocab_size=v, alphas=(0.1,), bits=(4,))
    eight = token_level_bound(t, ev(ALPHAS), vocab_size=v, alphas=ALPHAS, bits=(4,))
    i = ALPHAS.index(0.1)
    s = fake_scores(quantize(t, 4).tensors(), ALPHAS, v)
    k = one.chosen.code_bits
    width = smoothed_range_bits(0.1, v)
    for grid, r in ((1, one), (8, eight)):
        at_01 = s.smoothed_bits[i] + width * math.sqrt(
            (k * math.log(2) + math.log(grid / 0.05)) / (2 * 5000)
        )
        assert r.token_bits.bound <= at_01 + 1e-12
    assert one.token_bits.bound == pytest.approx(
        s.smoothed_bits[i] + width * math.sqrt((k * math.log(2) + math.log(1 / 0.05)) / (2 * 5000)),
        rel=1e-12,
    )


# -- a report end to end, recomputed from what it writes ---------------------------------


@pytest.fixture(scope="module")
def llama_report(tmp_path_factory):
    from lm_fixtures import lm_bundle

    from genbound.cli.main import main

    bundle = lm_bundle(tmp_path_factory, "llama")
    out = tmp_path_factory.mktemp("token_bound") / "rep"
    argv = ["report", str(bundle.adapter), "--base", str(bundle.base), "--data"]
    argv += [str(bundle.train_file), str(bundle.test_file), "--only", "gap,token_bound"]
    assert main([*argv, "--out", str(out)]) == 0
    import json

    return bundle, out, json.loads((out / "report.json").read_text())


def test_report_bounds_recomputed_by_hand(llama_report):
    _, _, doc = llama_report
    t = doc["bounds"]["token_level"]
    alphas, ranges, delta = t["alphas"], t["loss_ranges_bits"], t["delta"]
    v, m, n = t["vocab_size"], t["n_tokens"], t["n_texts"]
    nb, na = t["num_bit_candidates"], len(alphas)
    assert m == doc["gap"]["train"]["n_tokens"] and n == doc["gap"]["train"]["n"]
    assert v == 30_522 and ranges == [math.log2(1 + (1 - a) * v / a) for a in alphas]
    best = {"tok": math.inf, "err": math.inf, "doc": math.inf, "derr": math.inf}
    evaluated = [c for c in t["candidates"] if c["evaluated"]]
    assert evaluated
    for c in evaluated:
        k = c["code_bits"] * math.log(2)
        tok_c = math.sqrt((k + math.log(nb * na / delta)) / (2 * m))
        for i, a in enumerate(alphas):
            best["tok"] = min(best["tok"], c["train_smoothed_bits"][i] + ranges[i] * tok_c)
            low = -math.log2(1 - a + a / v)
            rhs = (k + math.log(2 * math.sqrt(n) / delta) + math.log(nb * na)) / n
            q = (c["train_doc_smoothed_bits"][i] - low) / ranges[i]
            best["doc"] = min(best["doc"], low + ranges[i] * kl_inverse_ref(q, rhs))
        err_c = math.sqrt((k + math.log(nb / delta)) / (2 * m))
        best["err"] = min(best["err"], c["train_error"] + err_c)
        erhs = (k + math.log(2 * math.sqrt(n) / delta) + math.log(nb)) / n
        best["derr"] = min(best["derr"], kl_inverse_ref(c["train_doc_error"], erhs))
    assert t["token_bits"]["bound"] == pytest.approx(best["tok"], rel=1e-12)
    assert t["token_error"]["bound"] == pytest.approx(best["err"], rel=1e-12)
    assert t["doc_bits"]["bound"] == pytest.approx(best["doc"], rel=1e-9)
    assert t["doc_error"]["bound"] == pytest.approx(best["derr"], rel=1e-9)
    assert t["token_bits"]["vacuous_at"] == pytest.approx(math.log2(v))


def test_quantized_scores_equal_peft_with_the_written_factors(llama_report):
    """The chosen candidate's training scores, recomputed by PEFT's own model with the
    written quantized factors as its LoRA weights, token by token in float64."""
    from lm_fixtures import base_tokenizer
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    bundle, out, doc = llama_report
    t = doc["bounds"]["token_level"]
    chosen = next(c for c in t["candidates"] if c["bits"] == t["token_bits"]["bits"])
    q = load_file(str(out / t["quantized_tensors"]))
    base = AutoModelForCausalLM.from_pretrained(bundle.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, bundle.adapter, local_files_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in q.items():
            module, factor = key.split("::")
            name = f"base_model.model.{module}.lora_{factor}.default.weight"
            assert params[name].shape == value.shape
            params[name].copy_(value)
    model = model.merge_and_unload().double().eval()
    tok = base_tokenizer(bundle)
    alphas, v = t["alphas"], t["vocab_size"]
    bits_sum, wrong, tokens, per_text = np.zeros(len(alphas)), 0.0, 0, []
    with torch.no_grad():
        for row in bundle.train_rows:
            ids = tok(row["text"], truncation=True, max_length=128)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            p = torch.softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            bits = np.array([(-np.log2((1 - a) * p.numpy() + a / v)).sum() for a in alphas])
            bits_sum += bits
            wrong += float((logits.argmax(-1) != torch.tensor(ids[1:])).sum())
            tokens += len(ids) - 1
            per_text.append(bits / (len(ids) - 1))
    assert tokens == t["n_tokens"]
    np.testing.assert_allclose(chosen["train_smoothed_bits"], bits_sum / tokens, rtol=1e-5)
    np.testing.assert_allclose(
        chosen["train_doc_smoothed_bits"], np.mean(per_text, axis=0), rtol=1e-5
    )
    assert chosen["train_error"] == pytest.approx(wrong / tokens, abs=1e-12)


def test_report_reads_the_loss_gap_first_and_shows_the_bounds(llama_report):
    _, out, doc = llama_report
    md = (out / "report.md").read_text()
    g = doc["gap"]
    reading = md.split("## What the numbers say")[1].split("##")[0]
    first = reading.strip().splitlines()[0]
    assert first.startswith(
        f"- The measured next-token cross-entropy gap is {g['loss_gap']:+.4f} ± "
        f"{g['loss_gap_stderr']:.4f} nats/token"
    ), first
    assert f"({g['train']['n_tokens']:,} and {g['test']['n_tokens']:,} predicted tokens)" in first
    assert "## Token- and document-level bounds" in md
