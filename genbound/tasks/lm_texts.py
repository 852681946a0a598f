"""Texts for a causal language model: whole texts, or prompt and response pairs, read from
``.jsonl``, ``.csv`` or ``.txt`` files and tokenized as a Trainer would.

A whole text is scored on every token but its first; a prompt and response pair on the
response's tokens only (the prompt is context). No label field is needed.
Tokenization is ``tokenizer(text, truncation=True, max_length=L)`` with the tokenizer's
default special tokens; for a pair, the prompt and the prompt followed by the response are
tokenized the same way and the loss mask starts where the prompt's tokens end. How many
texts were cut at L is counted, so a report can state it.

With ``chat_template``, a pair is first formatted by the tokenizer's chat template as a
user turn and an assistant turn (the prompt: the user turn and the generation prompt), as
TRL's SFTTrainer does for conversations, and tokenized without adding special tokens again
(the template writes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genbound.errors import GenboundError, input_error
from genbound.tasks.texts import check_columns, read_records, text_at


@dataclass(frozen=True)
class LMTexts:
    """Texts of one split.

    Attributes:
        texts: the whole texts (with ``prompts``: the responses).
        prompts: the prompts of prompt and response pairs, or None for whole texts.
        source: where they were read (for messages).
    """

    texts: tuple[str, ...]
    prompts: tuple[str, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.prompts is not None and len(self.prompts) != len(self.texts):
            raise GenboundError(
                f"{self.source or 'texts'}: expected one prompt per response; found "
                f"{len(self.prompts)} prompts and {len(self.texts)} responses."
            )

    def __len__(self) -> int:
        return len(self.texts)


def read_lm_texts(
    path: str | Path,
    *,
    text_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    encoding: str = "utf-8",
) -> LMTexts:
    """Read whole texts (``text_column``; a ``.txt`` file: one text per line) or prompt and
    response pairs (``prompt_column`` and ``response_column``) from ``path``.

    Raises a GenboundError naming the file, the line and the column for a missing file or
    column, a line that is not a JSON object, a value that is not a string, or an empty
    text or response.
    """
    path = Path(path)
    pair = prompt_column is not None or response_column is not None
    if pair == (text_column is not None) or (pair and None in (prompt_column, response_column)):
        raise GenboundError(
            f"{path}: expected either a text column, or a prompt column and a response "
            f"column; found text={text_column!r}, prompt={prompt_column!r}, "
            f"response={response_column!r}."
        )
    if path.suffix.lower() == ".txt":
        if pair:
            raise input_error(
                path,
                "a .txt file holds whole texts",
                expected="--text-column (any name) for one text per line",
                found="prompt and response columns",
                cls=GenboundError,
            )
        return _text_lines(path, encoding)
    records = read_records(path, encoding)
    check_columns(path, records, (prompt_column, response_column) if pair else (text_column,))
    n = len(records.rows)
    scored = response_column if pair else text_column
    texts = tuple(text_at(path, records, i, scored) for i in range(n))
    for i, t in enumerate(texts):
        if not t.strip():
            raise input_error(
                path,
                f"empty text in {records.where(i)}",
                key=scored,
                expected="text with something to predict",
                found=repr(t),
                cls=GenboundError,
            )
    prompts = tuple(text_at(path, records, i, prompt_column) for i in range(n)) if pair else None
    return LMTexts(texts, prompts, str(path))


def _text_lines(path: Path, encoding: str) -> LMTexts:
    try:
        with open(path, encoding=encoding) as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError, LookupError) as exc:
        raise input_error(
            path,
            "cannot read the text file",
            expected=f"a readable {encoding} text file",
            found=str(exc),
            cls=GenboundError,
        ) from None
    texts = tuple(line for line in lines if line.strip())
    if not texts:
        raise input_error(
            path, "no texts", expected="one text per line", found="none", cls=GenboundError
        )
    return LMTexts(texts, None, str(path))


@dataclass(frozen=True)
class TokenizedTexts:
    """Token ids and loss masks of one split, one list per text.

    Attributes:
        input_ids: per text, its token ids (at most ``max_length``).
        loss_mask: per text, 1 where the token is a target (the first token never is).
        truncated: texts cut at ``max_length``.
        max_length: L.
    """

    input_ids: tuple[tuple[int, ...], ...]
    loss_mask: tuple[tuple[int, ...], ...]
    truncated: int
    max_length: int

    @property
    def predicted_tokens(self) -> int:
        """Targets over all texts (N of a token-level bound)."""
        return sum(sum(m[1:]) for m in self.loss_mask)


def tokenize_lm(
    tokenizer, texts: LMTexts, max_length: int, *, chat_template: bool = False
) -> TokenizedTexts:
    """Token ids and loss masks of ``texts`` as ``tokenizer(..., truncation=True,
    max_length=max_length)`` gives them (pairs formatted by the chat template first when
    ``chat_template``: see the module docstring).

    Raises a GenboundError naming the source and the text when a text leaves nothing to
    predict: fewer than two tokens, or a prompt that fills all ``max_length`` tokens; or
    when ``chat_template`` is asked of whole texts or of a tokenizer without one.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise GenboundError(f"max_length: expected an integer >= 2 tokens; found {max_length!r}.")
    full, prompts = _texts_to_score(texts), texts.prompts
    special = {}
    if chat_template:
        full, prompts = _chat_formatted(tokenizer, texts)
        special = {"add_special_tokens": False}
    ids, masks, cut = [], [], 0
    for i, text in enumerate(full):
        enc = tokenizer(text, truncation=True, max_length=max_length, **special)["input_ids"]
        whole = tokenizer(text, truncation=False, **special)["input_ids"]
        cut += len(whole) > len(enc)
        start = 1
        if prompts is not None:
            prompt = tokenizer(prompts[i], truncation=True, max_length=max_length, **special)
            start = max(1, _prompt_length(prompt["input_ids"], enc))
        mask = tuple(int(j >= start) for j in range(len(enc)))
        if sum(mask) == 0:
            raise GenboundError(
                f"{texts.source or 'texts'}: text {i + 1} has nothing to predict within "
                f"max_length = {max_length} tokens ({len(enc)} tokens, the first "
                f"{start} of them context); shorten its prompt or raise --max-length."
            )
        ids.append(tuple(int(t) for t in enc))
        masks.append(mask)
    return TokenizedTexts(tuple(ids), tuple(masks), cut, max_length)


def _chat_formatted(tokenizer, texts: LMTexts) -> tuple[list[str], list[str]]:
    """(user + assistant turns, user turn + generation prompt) of each pair, as the
    tokenizer's chat template writes them."""
    if texts.prompts is None:
        raise GenboundError(
            f"{texts.source or 'texts'}: --chat-template formats prompt and response pairs; "
            "found whole texts. Give --prompt-column and --response-column, or drop "
            "--chat-template."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise GenboundError(
            f"--chat-template: the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
            "chat template (tokenizer_config.json 'chat_template' or chat_template.jinja); "
            "drop --chat-template to score the plain prompt followed by the response."
        )
    full, prompts = [], []
    for p, r in zip(texts.prompts, texts.texts, strict=True):
        user = [{"role": "user", "content": p}]
        prompts.append(
            tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        )
        turns = [*user, {"role": "assistant", "content": r}]
        full.append(tokenizer.apply_chat_template(turns, tokenize=False))
    return full, prompts


def _texts_to_score(texts: LMTexts) -> Sequence[str]:
    if texts.prompts is None:
        return texts.texts
    return [p + r for p, r in zip(texts.prompts, texts.texts, strict=True)]


def _prompt_length(prompt: Sequence[int], full: Sequence[int]) -> int:
    """Tokens of ``full`` that belong to the prompt: the prompt's tokens without a trailing
    end-of-sequence token the tokenizer adds (the common prefix of the two encodings)."""
    n = 0
    for a, b in zip(prompt, full, strict=False):
        if a != b:
            break
        n += 1
    return n
