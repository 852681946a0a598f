"""Causal-LM texts: reading whole texts and prompt/response pairs, and the Trainer's
tokenization with loss masks, checked against the tokenizer called directly."""

from __future__ import annotations

import json

import pytest

from genbound.errors import GenboundError
from genbound.tasks.lm_texts import LMTexts, read_lm_texts, tokenize_lm


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from genbound.datasets import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())  # a real WordPiece tokenizer


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_texts_pairs_and_lines(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"text": "one two", "p": "Q: hi", "r": " A: yo"}] * 2)
    assert read_lm_texts(f, text_column="text") == LMTexts(("one two",) * 2, None, str(f))
    pairs = read_lm_texts(f, prompt_column="p", response_column="r")
    assert pairs.prompts == ("Q: hi",) * 2 and pairs.texts == (" A: yo",) * 2
    csv = tmp_path / "b.csv"
    csv.write_text('text\nfirst text\n"second, with a comma"\n')
    assert read_lm_texts(csv, text_column="text").texts == ("first text", "second, with a comma")
    txt = tmp_path / "c.txt"
    txt.write_text("line one\n\nline two\n")
    assert read_lm_texts(txt, text_column="text").texts == ("line one", "line two")


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([], {"text_column": "text"}, "no rows"),
        ([{"text": "a"}], {"text_column": "body"}, "column missing"),
        ([{"text": "   "}], {"text_column": "text"}, "empty text in line 1"),
        ([{"text": 3}], {"text_column": "text"}, "text not a string in line 1"),
        ([{"text": "a"}], {"text_column": "text", "prompt_column": "p"}, "either a text column"),
        ([{"p": "a"}], {"prompt_column": "p"}, "either a text column"),
    ],
)
def test_bad_files_say_what_and_where(tmp_path, rows, kwargs, message):
    f = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(GenboundError, match=message) as err:
        read_lm_texts(f, **kwargs)
    assert "bad.jsonl" in str(err.value)


def test_a_line_that_is_not_an_object(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(GenboundError, match="line 2") as err:
        read_lm_texts(f, text_column="text")
    assert "bad.jsonl" in str(err.value)


def test_tokenization_is_the_tokenizers_own(tokenizer):
    texts = LMTexts(("the cat sat on the mat", "short"), None, "t")
    tok = tokenize_lm(tokenizer, texts, max_length=6)
    for i, text in enumerate(texts.texts):
        want = tokenizer(text, truncation=True, max_length=6)["input_ids"]
        assert list(tok.input_ids[i]) == want
        assert tok.loss_mask[i] == (0,) + (1,) * (len(want) - 1)  # all but the first token
    assert tok.truncated == 1  # the first text is longer than 6 tokens
    assert tok.predicted_tokens == sum(len(x) - 1 for x in tok.input_ids)


def test_prompt_tokens_are_context_not_targets(tokenizer):
    texts = LMTexts(("the mat",), ("where did the cat sit ?",), "t")
    tok = tokenize_lm(tokenizer, texts, max_length=64)
    full = tokenizer("where did the cat sit ?the mat")["input_ids"]
    prompt = tokenizer("where did the cat sit ?")["input_ids"]
    assert list(tok.input_ids[0]) == full
    # the prompt's tokens up to its end-of-sequence token are context
    shared = next(j for j, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b)
    assert tok.loss_mask[0] == tuple(int(j >= shared) for j in range(len(full)))
    assert sum(tok.loss_mask[0]) == len(full) - shared > 0


def test_nothing_to_predict_is_an_error(tokenizer):
    texts = LMTexts(("the mat",), ("where did the cat sit on that day ?",), "data.jsonl")
    with pytest.raises(GenboundError, match=r"data\.jsonl: text 1 has nothing to predict"):
        tokenize_lm(tokenizer, texts, max_length=5)
    with pytest.raises(GenboundError, match="max_length"):
        tokenize_lm(tokenizer, texts, max_length=1)


CHAT = (
    "{% for m in messages %}[CLS] {{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}[CLS] assistant : {% endif %}"
)


def test_chat_template_formats_pairs_as_the_template_writes_them(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT
    texts = LMTexts(
        ("the mat", "a chair by the door"), ("where did the cat sit ?", "and the dog ?"), "t"
    )
    out = tokenize_lm(tok, texts, max_length=64, chat_template=True)
    for i, (r, p) in enumerate(zip(texts.texts, texts.prompts, strict=True)):
        full = f"[CLS] user : {p} [SEP] [CLS] assistant : {r} [SEP] "
        prompt = f"[CLS] user : {p} [SEP] [CLS] assistant : "
        ids = tok(full, add_special_tokens=False)["input_ids"]
        start = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert out.input_ids[i] == tuple(ids)
        assert ids[:start] == tok(prompt, add_special_tokens=False)["input_ids"]
        assert out.loss_mask[i] == tuple(int(j >= start) for j in range(len(ids)))
        # the response and the template's closing [SEP] are the targets
        assert tok.decode([t for t, m in zip(ids, out.loss_mask[i], strict=True) if m]) == (
            tok.decode(tok(f"{r} [SEP]", add_special_tokens=False)["input_ids"])
        )


def test_chat_template_needs_pairs_and_a_template(tokenizer):
    pairs = LMTexts(("b",), ("a",), "t")
    with pytest.raises(GenboundError, match="no chat template"):
        tokenize_lm(tokenizer, pairs, max_length=16, chat_template=True)
    with pytest.raises(GenboundError, match="prompt and response pairs"):
        tokenize_lm(tokenizer, LMTexts(("a b",), None, "t"), max_length=16, chat_template=True)
