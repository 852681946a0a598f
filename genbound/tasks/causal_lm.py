"""A Hugging Face causal language model run on texts: next-token loss and error per text.

The fine-tuned model is rebuilt from a checkpoint (base weights plus every update) in
eval mode. Each text is one unit, weighted by its predicted tokens: the objective's per-unit
loss is the text's mean next-token cross-entropy (nats/token) and every mean over the
objective (the gap, the curvature's loss, errors of perturbed models) is token-weighted,
``sum of token losses / number of predicted tokens``, while texts stay the independent
draws for standard errors (see :mod:`genbound.gap`).

The output layer runs a chunk of predicted positions at a time
(:func:`~genbound.tasks.lm_loss.next_token_losses`): the (tokens x vocabulary) logits of a
batch are never held at once. Batches hold texts of similar length, right-padded, with at
most ``batch_tokens`` padded tokens each; padding is masked and never scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genbound.checkpoint.model import Checkpoint
from genbound.checkpoint.tensors import read_json
from genbound.errors import GenboundError
from genbound.tasks.hf_text import (
    _to,
    _trainable_names,
    base_folder,
    check_positive,
    load_pretrained,
    load_tokenizer,
)
from genbound.tasks.lm_loss import CHUNK_TOKENS, TokenLosses, next_token_losses
from genbound.tasks.lm_texts import LMTexts, TokenizedTexts, tokenize_lm
from genbound.tasks.metric import Metric
from genbound.tasks.objective import Batch, Objective
from genbound.tasks.rebuild import load_updates_into

log = logging.getLogger(__name__)

__all__ = [
    "MAX_LENGTH_CAP",
    "CausalLMTask",
    "LMScorer",
    "causal_lm_metric",
    "default_max_length",
    "lm_batches",
    "lm_objective",
    "predicted_tokens",
]

#: The largest default max_length (tokens per text). Analyses keep every layer's
#: activations of a batch for second derivatives, and eager attention's (heads x T x T)
#: weights per layer grow with T^2: at T = 1,024 a 32-head model holds 128 MiB of them per
#: text and layer. Longer contexts are for a --max-length the user chooses.
MAX_LENGTH_CAP = 1024

#: The model dtypes a causal LM task takes (``auto``: as saved).
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _no_output_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    raise GenboundError(
        "a causal language model is scored by its objective's scorer (next-token losses of "
        "each text), not from whole outputs; use Objective.scores or the objective's loss."
    )


def causal_lm_metric(vocab_size: int) -> Metric:
    """Next-token prediction over a vocabulary of V tokens: per text, the mean next-token
    cross-entropy (nats/token) and top-1 error, texts weighted by their predicted tokens."""
    check_positive("vocab_size", vocab_size, "tokens")
    return Metric(
        name="causal_lm",
        loss_name="next-token cross-entropy",
        error_name="top-1 next-token error",
        unit="texts",
        loss=_no_output_loss,
        error=_no_output_loss,
        error_range=1.0,
        chance=None,
        loss_range=None,
        loss_unit="nats/token",
        weight_unit="predicted tokens",
        vocab_size=int(vocab_size),
    )


def predicted_tokens(batch: Batch) -> torch.Tensor:
    """(B,) float64: each text's predicted tokens (a language-model batch's labels)."""
    return batch.labels


@dataclass(frozen=True)
class LMScorer:
    """Next-token losses of a causal LM on a batch of texts, the output layer applied
    ``chunk_tokens`` predicted positions at a time.

    Batches hold ``input_ids``, ``attention_mask`` and ``loss_mask`` (B, T), right-padded.
    Called as a :data:`~genbound.tasks.objective.Scorer`: per text (mean loss in
    nats/token, top-1 error rate), float64, no gradients.
    """

    chunk_tokens: int = CHUNK_TOKENS

    def token_losses(
        self, model: nn.Module, batch: Batch, smoothing: Sequence[float] = ()
    ) -> TokenLosses:
        """:class:`~genbound.tasks.lm_loss.TokenLosses` of each text (differentiable
        ``loss_sum`` under grad)."""
        inputs = batch.inputs
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        hidden, head = _final_states(model, ids, mask)
        return next_token_losses(
            hidden,
            head,
            ids,
            inputs["loss_mask"],
            chunk_tokens=self.chunk_tokens,
            smoothing=smoothing,
        )

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            t = self.token_losses(model, batch)
        n = t.tokens.to(torch.float64)
        return t.loss_sum / n, t.error_sum / n


@dataclass(frozen=True)
class LMLoss:
    """The objective's per-unit loss: each text's mean next-token cross-entropy (B,),
    nats/token, differentiable (what curvature and landscapes differentiate; weighted by
    predicted tokens it gives the token-weighted mean)."""

    scorer: LMScorer

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        t = self.scorer.token_losses(model, batch)
        return t.loss_sum / t.tokens.to(torch.float64)


def _final_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """(hidden (B, T, H), output layer) of a causal LM: the decoder's last hidden states and
    the LM head, so the head runs chunk by chunk; for a model whose logits are more than
    its head of the hidden states (soft-capped or scaled logits), its full logits and the
    identity."""
    cfg = getattr(model, "config", None)
    plain = not any(
        getattr(cfg, key, None) not in (None, 1.0)
        for key in ("final_logit_softcapping", "logit_scale")
    )
    body = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if plain and isinstance(body, nn.Module) and body is not model and head is not None:
        out = body(input_ids=ids, attention_mask=mask)
        hidden = getattr(out, "last_hidden_state", None)
        if isinstance(hidden, torch.Tensor):
            return hidden, head
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out[0], nn.Identity()


@dataclass(frozen=True)
class CausalLMTask:
    """Next-token prediction on texts with a Hugging Face causal language model.

    Attributes:
        train, test: the texts (whole texts, or prompt and response pairs).
        base_path: the pretrained model folder (read offline); None: the checkpoint's base.
        max_length: L, tokens per text (longer texts are cut and counted); None: the
            tokenizer's and the model's limit, at most :data:`MAX_LENGTH_CAP`.
        batch_tokens: padded tokens per batch (texts of similar length share one).
        chunk_tokens: predicted positions per call of the output layer.
        device: where the model and the data live.
        chat_template: format prompt and response pairs with the tokenizer's chat template
            (see :mod:`genbound.tasks.lm_texts`).
        dtype: the model's floating-point type: ``"auto"`` (as saved: a bfloat16 model
            stays bfloat16), ``"float32"``, ``"bfloat16"`` or ``"float16"``. Losses are
            computed in at least float32 and summed in float64 either way.
    """

    train: LMTexts
    test: LMTexts
    base_path: Path | None = None
    max_length: int | None = None
    batch_tokens: int = 8192
    chunk_tokens: int = CHUNK_TOKENS
    device: str = "cpu"
    dtype: str = "auto"
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise GenboundError(
                f"dtype: expected one of {', '.join(DTYPES)}; found {self.dtype!r}."
            )
        if self.max_length is not None:
            check_positive("max_length", self.max_length, "tokens")
        check_positive("batch_tokens", self.batch_tokens, "tokens")
        check_positive("chunk_tokens", self.chunk_tokens, "tokens")
        if (self.train.prompts is None) != (self.test.prompts is None):
            raise GenboundError(
                f"{self.test.source or 'test texts'}: expected the training texts' form "
                f"({'prompt and response pairs' if self.train.prompts is not None else 'whole texts'}, "
                f"from {self.train.source or 'train'}); found the other."
            )

    @property
    def n_train(self) -> int:
        """N in texts (the document-level count; the token-level N is counted when the texts
        are tokenized)."""
        return len(self.train)

    @property
    def metric(self) -> Metric:
        """Next-token prediction over the base model's vocabulary (read from its config)."""
        return causal_lm_metric(self._vocab_size(self.base_for(None)))

    @property
    def description(self) -> str:
        form = "prompt/response pairs" if self.train.prompts is not None else "texts"
        limit = f"{self.max_length:,}" if self.max_length is not None else "the model's limit of"
        return (
            f"causal language modelling, {len(self.train):,} train / {len(self.test):,} test "
            f"{form} from {self.train.source}, at most {limit} tokens each"
        )

    def base_for(self, checkpoint: Checkpoint | None) -> Path:
        return base_folder(self.base_path, checkpoint, "causal language model task")

    def _vocab_size(self, base_path: Path) -> int:
        cfg = read_json(base_path / "config.json")
        v = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise GenboundError(
                f"{base_path / 'config.json'}: expected an integer vocab_size >= 2 (key "
                f"'vocab_size'); found {v!r}."
            )
        return v

    def build_model(
        self, checkpoint: Checkpoint | None = None, *, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        """The base causal LM with the checkpoint's updates, in eval mode (a fresh model,
        read offline from the local folder)."""
        from transformers import AutoModelForCausalLM

        base_path = self.base_for(checkpoint)
        model = load_pretrained(
            AutoModelForCausalLM,
            base_path,
            "causal language model",
            attn_implementation=attn_implementation,
            **({} if self.dtype == "auto" else {"dtype": getattr(torch, self.dtype)}),
        )
        if checkpoint is not None:
            load_updates_into(model, checkpoint)
        return model.to(self.device).eval()

    def batches(self, data: LMTexts, base_path: Path, tokenizer=None) -> list[Batch]:
        """:func:`lm_batches` of ``data`` with the base model's tokenizer (``tokenizer``:
        already loaded from ``base_path``), at most L tokens per text."""
        tok = tokenizer if tokenizer is not None else load_tokenizer(base_path)
        length = self.max_length or default_max_length(tok, base_path)
        return lm_batches(tok, data, length, self.batch_tokens, chat_template=self.chat_template)

    def objectives(self, checkpoint: Checkpoint | None) -> tuple[Objective, Objective]:
        """(train, test) objectives of the fine-tuned model; both share one model."""
        base_path = self.base_for(checkpoint)
        model = self.build_model(checkpoint)
        vocab = self._vocab_size(base_path)
        trainable = _trainable_names(model, checkpoint)
        desc = f"{type(model).__name__} from {base_path}, full forward"
        tok = load_tokenizer(base_path)
        out = []
        for split, data in (("train", self.train), ("test", self.test)):
            batches = [_to(b, self.device) for b in self.batches(data, base_path, tok)]
            out.append(
                lm_objective(
                    model, batches, trainable, f"{desc} ({split})", vocab, self.chunk_tokens
                )
            )
        return out[0], out[1]


def lm_objective(
    model: nn.Module,
    batches: Sequence[Batch],
    trainable: tuple[str, ...],
    description: str,
    vocab_size: int,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Objective:
    """The :class:`~genbound.tasks.objective.Objective` of a causal LM on language-model
    batches (:func:`pack_texts`): per-text mean next-token loss, texts weighted by their
    predicted tokens, scored chunk by chunk."""
    scorer = LMScorer(chunk_tokens)
    return Objective(
        model,
        batches,
        LMLoss(scorer),
        trainable,
        description,
        metric=causal_lm_metric(vocab_size),
        weight=predicted_tokens,
        score=scorer,
    )


def lm_batches(
    tokenizer,
    texts: LMTexts | Sequence[str],
    max_length: int,
    batch_tokens: int = 8192,
    *,
    chat_template: bool = False,
) -> list[Batch]:
    """Language-model batches of ``texts`` (an :class:`LMTexts`, or whole texts as
    strings) tokenized by ``tokenizer`` as a Trainer would (:func:`tokenize_lm`), at most
    ``max_length`` tokens each, packed by :func:`pack_texts`: right-padded
    ``input_ids``, ``attention_mask``, ``loss_mask`` (B, T) int64, labels the predicted
    tokens per text (B,) float64. Texts cut at ``max_length`` are counted in a warning."""
    if not isinstance(texts, LMTexts):
        texts = LMTexts(tuple(str(t) for t in texts), None, "texts")
    enc = tokenize_lm(tokenizer, texts, max_length, chat_template=chat_template)
    if enc.truncated:
        log.warning(
            "%s: %d of %d texts are longer than max_length = %d tokens and were cut",
            texts.source or "texts",
            enc.truncated,
            len(texts),
            max_length,
        )
    return pack_texts(enc, pad_id(tokenizer), batch_tokens)


def pad_id(tokenizer) -> int:
    """The id padded positions hold (masked, never scored): the tokenizer's padding token,
    else its end-of-sequence token, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def pack_texts(enc: TokenizedTexts, pad_id: int, batch_tokens: int) -> list[Batch]:
    """Tokenized texts in batches of similar length (sorted by length, stable), each with
    at most ``batch_tokens`` padded tokens (a longer text alone)."""
    lengths = [len(ids) for ids in enc.input_ids]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is None or (len(g) + 1) * lengths[i] > batch_tokens:
            groups.append([i])
        else:
            g.append(i)
    batches = []
    for g in groups:
        width = max(lengths[i] for i in g)
        ids = torch.full((len(g), width), int(pad_id), dtype=torch.int64)
        attn = torch.zeros((len(g), width), dtype=torch.int64)
        loss = torch.zeros((len(g), width), dtype=torch.int64)
        for row, i in enumerate(g):
            n = lengths[i]
            ids[row, :n] = torch.tensor(enc.input_ids[i])
            attn[row, :n] = 1
            loss[row, :n] = torch.tensor(enc.loss_mask[i])
        tokens = loss[:, 1:].sum(dim=1).to(torch.float64)
        inputs = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}
        batches.append(Batch(inputs, tokens))
    return batches


def default_max_length(tokenizer, base_path: Path) -> int:
    """L when none is given: the tokenizer's ``model_max_length`` and the model's
    positions (``max_position_embeddings``/``n_positions``), whichever is smaller, at most
    :data:`MAX_LENGTH_CAP`."""
    cfg = read_json(base_path / "config.json")
    limits = [MAX_LENGTH_CAP]
    for value in (
        getattr(tokenizer, "model_max_length", None),
        cfg.get("max_position_embeddings"),
        cfg.get("n_positions"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 2 <= value < 10**7:
            limits.append(value)
    return min(limits)
