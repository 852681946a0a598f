"""A Hugging Face sequence classifier run on labelled texts, with cached lower layers.

The fine-tuned model is rebuilt from a checkpoint (base weights plus every update) in
eval mode. For BERT-family encoders (``<base>.embeddings``, ``<base>.encoder.layer``,
optional ``<base>.pooler``) whose updates all lie at or above layer L, the hidden states
entering layer L are computed once, without gradients, and the objective evaluates only
layers L.. plus the pooler and the classifier on them: every later forward, Hessian-vector
product and landscape point costs a fraction of a full pass. Other architectures are
evaluated in full (the objective's description says which).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError, input_error
from genbound.tasks.activation_cache import (
    CACHE,
    activation_cache_info,
    clear_activation_cache,
    set_activation_cache_limits,
)
from genbound.tasks.metric import Metric, classification
from genbound.tasks.objective import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import load_updates_into
from genbound.tasks.texts import LabelledTexts, preview, read_labelled

log = logging.getLogger(__name__)

__all__ = [
    "EncoderSuffix",
    "TextClassificationTask",
    "activation_cache_info",
    "clear_activation_cache",
    "first_adapted_layer",
    "load_tokenizer",
    "set_activation_cache_limits",
    "text_files",
]

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def first_adapted_layer(names: Sequence[str]) -> int | None:
    """The lowest encoder layer index any updated tensor belongs to; None if an update lies
    below the encoder's layers (embeddings), 10**9 if all lie above them (head only)."""
    lowest = 10**9
    for name in names:
        m = _LAYER.search(name)
        if m:
            lowest = min(lowest, int(m.group(1)))
        elif "embeddings" in name:
            return None
    return lowest


class EncoderSuffix(nn.Module):
    """Layers L.. of a BERT-family classifier, its pooler and head, on cached hidden states.

    Takes ``hidden`` (B, T, H), the hidden states entering layer L, and ``attention_mask``
    (B, T); returns logits (B, K). The full model is registered as ``model``, so parameter
    names are the model's own behind a ``model.`` prefix; the layers below L are not run.
    With ``first_token`` (default) the last layer runs only where the head reads it
    (:mod:`genbound.tasks.first_token`), when the model's structure allows it.
    """

    def __init__(self, model: nn.Module, start: int, *, first_token: bool = True):
        super().__init__()
        self.model = model
        self.start = start
        self.first_token = first_token

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        from genbound.tasks.first_token import first_token_output, reads_first_token_only

        base = self.model.base_model
        layers = list(base.encoder.layer)[self.start :]
        last = layers[-1] if layers else None
        if self.first_token and last is not None and reads_first_token_only(self.model, last):
            layers = layers[:-1]  # the last one runs for the token the head reads
        else:
            last = None
        if layers:
            mask = create_bidirectional_mask(
                config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask
            )
        for layer in layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        if last is not None:
            hidden = first_token_output(last, hidden, attention_mask)
        pooler = getattr(base, "pooler", None)
        pooled = pooler(hidden) if pooler is not None else hidden[:, 0]
        return self.model.classifier(getattr(self.model, "dropout", nn.Identity())(pooled))


@dataclass(frozen=True)
class TextClassificationTask:
    """Sequence classification of labelled texts with a Hugging Face model.

    Attributes:
        train, test: the data; test must have the training set's ``label_names``.
        base_path: the pretrained model folder (read offline); None: the checkpoint's base
            model.
        max_length: tokens per text (longer texts are truncated).
        batch_size: examples per batch (batches are length-bucketed: texts of similar length
            share a batch, so little is padded).
        cache_activations: evaluate only the layers above the first adapted one on cached
            hidden states (BERT-family encoders).
        device: where the model and the data live (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    """

    train: LabelledTexts
    test: LabelledTexts
    base_path: Path | None = None
    max_length: int = 64
    batch_size: int = 64
    cache_activations: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_positive("max_length", self.max_length, "tokens")
        check_positive("batch_size", self.batch_size, "examples")
        if self.test.label_names != self.train.label_names:
            raise GenboundError(
                f"{self.test.source or 'test set'}: expected the training set's classes "
                f"{preview(self.train.label_names)} (from {self.train.source or 'train'}) in "
                f"that order; found {preview(self.test.label_names)}. Read the test file with "
                "label_names=train.label_names."
            )

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def num_labels(self) -> int:
        return len(self.train.label_names)

    @property
    def metric(self) -> Metric:
        """Classification into ``num_labels`` classes: cross-entropy, the 0-1 error, and
        chance level 1 - 1/num_labels."""
        return classification(self.num_labels)

    @property
    def description(self) -> str:
        return (
            f"sequence classification, {len(self.train):,} train / {len(self.test):,} test texts "
            f"from {self.train.source}, {self.num_labels} labels, max {self.max_length} tokens"
        )

    def base_for(self, checkpoint: Checkpoint | None) -> Path:
        """The pretrained model folder: ``base_path``, else the checkpoint's base model."""
        return base_folder(self.base_path, checkpoint, "text classification task")

    def build_model(
        self, checkpoint: Checkpoint | None = None, *, attn_implementation: str = "sdpa"
    ) -> nn.Module:
        """The base model with the checkpoint's updates, in eval mode (a fresh model).

        The model is read from the local folder only (``local_files_only``): nothing is
        downloaded and the Hugging Face Hub is never contacted. transformers' verbosity
        and progress bars are turned down while it loads and restored after.
        """
        from transformers import AutoModelForSequenceClassification

        base_path = self.base_for(checkpoint)
        self.check_head(checkpoint, base_path)
        model = load_pretrained(
            AutoModelForSequenceClassification,
            base_path,
            "sequence classifier",
            num_labels=self.num_labels,
            attn_implementation=attn_implementation,
        )
        if checkpoint is not None:
            load_updates_into(model, checkpoint)
        return model.to(self.device).eval()

    def check_head(self, checkpoint: Checkpoint | None, base_path: Path) -> None:
        """A GenboundError unless the classifier the model gets has ``num_labels`` rows.

        The head is the checkpoint's updated output layer (a tensor named like
        ``classifier.weight`` or ``score.weight``, K = its outputs), else the base model's
        saved one; a base without a head gets a fresh one of ``num_labels`` rows.
        """
        update = _head_update(checkpoint)
        if update is not None:
            where, name, k = checkpoint.path, update.param, update.shape[0]
            whose = "the checkpoint's head"
        else:
            found = _base_head(checkpoint, base_path)
            if found is None:
                return
            (name, k), where, whose = found, base_path, "the base model's head"
        if k == self.num_labels:
            return
        files = self.train.source + (
            f" (and {self.test.source})" if self.test.source != self.train.source else ""
        )
        names = self.train.label_names
        raise input_error(
            where,
            f"{whose} has {k} classes but the data have {self.num_labels}",
            key=name,
            expected=f"{k} classes, the rows of {name!r}",
            found=f"{self.num_labels} labels {preview(names)} from {files}",
            hint=f"Give the head's {k} classes in order with --label-names (labels are "
            "matched to them by value), or check --label-column",
        )

    def tokenized_batches(self, data: LabelledTexts, base_path: Path) -> list[Batch]:
        """Length-bucketed batches of ``input_ids``/``attention_mask`` (fixed order)."""
        tok = load_tokenizer(base_path)
        enc = tok(list(data.texts), truncation=True, max_length=self.max_length)
        lengths = torch.tensor([len(ids) for ids in enc["input_ids"]])
        order = torch.argsort(lengths, stable=True)
        batches = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size].tolist()
            width = int(lengths[idx].max())
            ids = torch.full((len(idx), width), tok.pad_token_id or 0, dtype=torch.int64)
            mask = torch.zeros((len(idx), width), dtype=torch.int64)
            for row, i in enumerate(idx):
                seq = enc["input_ids"][i]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            batches.append(Batch({"input_ids": ids, "attention_mask": mask}, data.labels[idx]))
        return batches

    def objectives(self, checkpoint: Checkpoint | None) -> tuple[Objective, Objective]:
        """(train, test) objectives of the fine-tuned model; both share one model."""
        model = self.build_model(checkpoint)
        base_path = self.base_for(checkpoint)
        m = self.metric
        names = list(checkpoint.updates) if checkpoint is not None else []
        trainable = _trainable_names(model, checkpoint)
        start = first_adapted_layer(names) if self.cache_activations else None
        n_layers = len(model.base_model.encoder.layer) if _is_bert_family(model) else None
        if start is None or n_layers is None:
            desc = f"{type(model).__name__} from {base_path}, full forward"
            train = [_to(b, self.device) for b in self.tokenized_batches(self.train, base_path)]
            test = [_to(b, self.device) for b in self.tokenized_batches(self.test, base_path)]
            return (
                Objective(model, train, cross_entropy_loss, trainable, desc + " (train)", metric=m),
                Objective(model, test, cross_entropy_loss, trainable, desc + " (test)", metric=m),
            )
        start = min(start, n_layers)
        suffix = EncoderSuffix(model, start).eval()
        suffix_names = tuple(f"model.{n}" for n in trainable)
        desc = f"{type(model).__name__} from {base_path}, layers {start}..{n_layers - 1} on cached inputs"
        out = []
        for split, data in (("train", self.train), ("test", self.test)):
            batches = self.cached_batches(model, data, start, base_path)
            out.append(
                Objective(
                    suffix, batches, cross_entropy_loss, suffix_names, f"{desc} ({split})", metric=m
                )
            )
        return out[0], out[1]

    def cached_batches(
        self,
        model: nn.Module,
        data: LabelledTexts,
        start: int,
        base_path: Path,
        *,
        also: Sequence[int] = (),
    ) -> list[Batch]:
        """Batches of the hidden states entering layer ``start`` (``hidden`` (B, T, H) and
        ``attention_mask`` (B, T)), computed by ``model``'s frozen lower layers.

        The layers below ``start`` must be the base model's: the result is memoized per
        process by (base model folder, texts, layer, max_length, batch_size, device), so
        every checkpoint of a sweep on the same data and base shares one pass. The layers
        in ``also`` are computed by the same pass and memoized too. The memo is bounded
        in entries and bytes and cleared by :func:`clear_activation_cache` (see
        :mod:`genbound.tasks.activation_cache`).
        """
        hit = CACHE.get(self._cache_key(base_path, data, start), data.texts)
        if hit is not None:
            return hit
        starts = list(dict.fromkeys([start, *also]))
        per_start: dict[int, list[Batch]] = {s: [] for s in starts}
        with torch.no_grad():
            for b in self.tokenized_batches(data, base_path):
                b = _to(b, self.device)
                states = model.base_model(**b.inputs, output_hidden_states=True).hidden_states
                mask = b.inputs["attention_mask"]
                for s in starts:
                    hidden = states[s].detach().clone()
                    per_start[s].append(Batch({"hidden": hidden, "attention_mask": mask}, b.labels))
        for s in reversed(starts):  # ``start`` last: the most recently used
            CACHE.put(self._cache_key(base_path, data, s), data.texts, per_start[s])
        return per_start[start]

    def _cache_key(self, base_path: Path, data: LabelledTexts, start: int) -> tuple:
        return (
            str(base_path),
            start,
            self.max_length,
            self.batch_size,
            self.device,
            hash(data.texts),
        )


#: Names (suffixes) of sequence classifiers' output layers, (K, hidden): BERT-family,
#: decoder (``score``), RoBERTa/ELECTRA, BART and XLNet heads.
HEAD_TENSORS = (
    "classifier.weight",
    "score.weight",
    "classifier.out_proj.weight",
    "classification_head.out_proj.weight",
    "logits_proj.weight",
)


def _is_head(name: str) -> bool:
    return any(name == h or name.endswith("." + h) for h in HEAD_TENSORS)


def _head_update(checkpoint: Checkpoint | None):
    """The checkpoint's update of the output layer, or None."""
    if checkpoint is None:
        return None
    return next((u for u in checkpoint.updates.values() if _is_head(u.param)), None)


def _base_head(checkpoint: Checkpoint | None, base_path: Path) -> tuple[str, int] | None:
    """(name, K) of the output layer saved in the base model at ``base_path``, or None."""
    from genbound.checkpoint.base import BaseModel

    base = getattr(checkpoint, "base", None)
    opened = None
    if base is None or Path(base.path).resolve() != base_path.resolve():
        try:
            base = opened = BaseModel(base_path)
        except GenboundError:
            return None  # no readable weights: loading the model says so
    try:
        name = next((k for k in base.keys() if _is_head(k)), None)
        return (name, base.shape(name)[0]) if name is not None else None
    finally:
        if opened is not None:
            opened.close()


def load_pretrained(auto_class, base_path: Path, kind: str, **kwargs) -> nn.Module:
    """``auto_class.from_pretrained(base_path, local_files_only=True, **kwargs)``: read from
    the local folder only (nothing is downloaded, no remote code), with transformers'
    verbosity and progress bars turned down while it loads and restored after; a
    GenboundError naming the folder when it does not load as a ``kind`` transformers
    knows."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # e.g. a fresh head's "newly initialized" notice
    hf_logging.disable_progress_bar()  # library code draws no bars
    try:
        return auto_class.from_pretrained(base_path, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:  # missing files, unknown model_type
        raise input_error(
            base_path,
            "cannot load the base model",
            expected=f"a Hugging Face model folder (config.json and weights) of a {kind} "
            "transformers knows",
            found=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}",
            cls=GenboundError,
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def base_folder(base_path: Path | str | None, checkpoint: Checkpoint | None, what: str) -> Path:
    """The pretrained model folder: ``base_path``, else the checkpoint's base model; a
    GenboundError (``what`` names the task) when there is none."""
    if base_path is not None:
        return Path(base_path)
    base = getattr(checkpoint, "base", None)
    if base is None or not Path(base.path).is_dir():
        raise GenboundError(
            f"{what}: expected a base model folder (with its tokenizer) from the checkpoint "
            "or base_path; found "
            + (f"{base.path} (not a folder)." if base is not None else "none.")
        )
    return Path(base.path)


def load_tokenizer(base_path: Path):
    """The tokenizer saved in the model folder ``base_path`` (read offline: local files only,
    no remote code).

    Raises a GenboundError naming the folder when none loads, or when what loads has no
    vocabulary beyond its special tokens (transformers then builds an empty tokenizer
    that maps every word to the unknown token).
    """
    from transformers import AutoTokenizer

    expected = "a tokenizer saved with the model (tokenizer.json, or vocab.txt / vocab.json "
    expected += "with tokenizer_config.json)"
    try:
        tok = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    except Exception as exc:  # transformers and tokenizers raise many kinds for a bad folder
        detail = " ".join(str(exc).split())[:300]
        raise input_error(
            base_path,
            "cannot load a tokenizer",
            expected=expected,
            found=f"{type(exc).__name__} ({detail})" if detail else type(exc).__name__,
            hint="Save the tokenizer in the base model folder (tokenizer.save_pretrained)",
            cls=GenboundError,
        ) from None
    if not set(tok.get_vocab()) - set(tok.all_special_tokens):
        raise input_error(
            base_path,
            "no tokenizer vocabulary",
            expected=expected,
            found=f"only the special tokens {sorted(tok.all_special_tokens)}",
            hint="Save the tokenizer in the base model folder (tokenizer.save_pretrained)",
            cls=GenboundError,
        )
    return tok


def check_positive(name: str, value: object, unit: str) -> None:
    """A GenboundError unless ``value`` is a whole number >= 1 (``name`` names the setting)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenboundError(f"{name}: expected a positive number of {unit}; found {value!r}.")


def _to(batch: Batch, device: str) -> Batch:
    """The batch's tensors on ``device`` (the batch itself when already there)."""
    if device == "cpu":
        return batch
    inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    return Batch(inputs, batch.labels.to(device))


def _is_bert_family(model: nn.Module) -> bool:
    base = getattr(model, "base_model", None)
    return (
        base is not None
        and hasattr(base, "embeddings")
        and hasattr(getattr(base, "encoder", None), "layer")
        and hasattr(model, "classifier")
    )


def _trainable_names(model: nn.Module, checkpoint: Checkpoint | None) -> tuple[str, ...]:
    """Model parameter names that the checkpoint updated (the trained subspace, merged)."""
    if checkpoint is None:
        return ()
    from genbound.tasks.rebuild import resolve_parameter

    names = {n for n, _ in model.named_parameters()}
    found = (resolve_parameter(names, u.param) for u in checkpoint.updates.values())
    return tuple(n for n in found if n is not None)


def text_files(
    train: str,
    test: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    encoding: str = "utf-8",
    base_path: str | None = None,
    max_length: int = 64,
    batch_size: int = 64,
) -> TextClassificationTask:
    """The task of ``--data TRAIN TEST``: labelled texts from two ``.csv`` or ``.jsonl`` files.

    The classes are ``label_names`` in that order, else the training file's labels (see
    :mod:`genbound.tasks.texts`: class indices when all are non-negative integers, else the
    sorted distinct labels); labels are compared by value (``1``, ``1.0`` and ``"1"`` are
    one class). Every test label must be one of the classes.
    """
    check_positive("--max-length", max_length, "tokens")
    check_positive("batch_size", batch_size, "examples")
    tr = read_labelled(
        train,
        text_column=text_column,
        label_column=label_column,
        label_names=label_names,
        encoding=encoding,
        names_from="--label-names",
    )
    te = read_labelled(
        test,
        text_column=text_column,
        label_column=label_column,
        label_names=tr.label_names,
        encoding=encoding,
        names_from=f"the classes of the training file {train}",
    )
    return TextClassificationTask(
        tr,
        te,
        base_path=Path(base_path) if base_path else None,
        max_length=max_length,
        batch_size=batch_size,
    )
