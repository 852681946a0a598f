"""The task of ``--data TRAIN TEST``: texts for a sequence classifier or a causal language
model, whichever the checkpoint was trained as.

The objective is what the user asks for (``objective="causal_lm"`` or
``"sequence_classification"``), else what the checkpoint states (PEFT's ``task_type``
CAUSAL_LM or SEQ_CLS), else what its base model's ``config.json`` lists under
``architectures`` (a name ending in ``ForCausalLM`` or ``LMHeadModel``: a causal LM), else
sequence classification. :meth:`TextData.for_checkpoint` resolves it for one checkpoint
(a sweep may hold both kinds); asking for a causal LM of a checkpoint that states
classification, or that trained a classification head, is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError

log = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "TextData", "infer_objective", "text_data"]

CAUSAL_LM = "causal_lm"
SEQUENCE_CLASSIFICATION = "sequence_classification"
#: The objectives ``--objective`` names (``auto``: inferred from the checkpoint).
OBJECTIVES = ("auto", CAUSAL_LM, SEQUENCE_CLASSIFICATION)
#: Default tokens per text of a sequence classifier's texts.
CLASSIFIER_MAX_LENGTH = 64

_LM_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def infer_objective(checkpoint: Checkpoint | None) -> tuple[str | None, str]:
    """(objective, where it was read) as the checkpoint states it: its own record (PEFT's
    ``task_type``), else its base model's ``architectures``; (None, "") when neither says."""
    if checkpoint is None:
        return None, ""
    if checkpoint.objective is not None:
        return checkpoint.objective, f"the task_type of {checkpoint.path}"
    for arch in _architectures(checkpoint):
        if arch.endswith(_LM_ARCHITECTURES):
            return CAUSAL_LM, f"architectures {arch!r} of the base model's config.json"
        if arch.endswith("ForSequenceClassification"):
            return (
                SEQUENCE_CLASSIFICATION,
                f"architectures {arch!r} of the base model's config.json",
            )
    return None, ""


def _architectures(checkpoint: Checkpoint) -> list[str]:
    from genbound.checkpoint.tensors import read_json

    base = checkpoint.base
    config = Path(base.path) / "config.json" if base is not None else None
    if config is None or not config.is_file():
        return []
    archs = read_json(config).get("architectures") or []
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []


def _head_update(checkpoint: Checkpoint) -> str | None:
    from genbound.tasks.hf_text import _head_update as head

    u = head(checkpoint)
    return u.param if u is not None else None


@dataclass(frozen=True)
class TextData:
    """Texts from two files, the task they make resolved per checkpoint.

    Attributes:
        train, test: the data files (.jsonl, .csv; .txt for whole texts of a causal LM).
        objective: ``"auto"``, ``"causal_lm"`` or ``"sequence_classification"``.
        text_column, label_column, label_names: a classifier's texts and labels (a causal
            LM's whole texts are ``text_column``).
        prompt_column, response_column: a causal LM's prompt and response pairs (loss on the
            response's tokens only).
        encoding: of the files.
        base_path: the pretrained model folder; None: the checkpoint's base.
        max_length: tokens per text; None: 64 for a classifier, the model's limit (at most
            1,024) for a causal LM.
        batch_size: a classifier's texts per batch.
        device: where the model and the data live.
        chat_template: format a causal LM's prompt and response pairs with the
            tokenizer's chat template.
        dtype: a causal LM's floating-point type (``auto``: as saved; see
            :class:`~genbound.tasks.causal_lm.CausalLMTask`).
    """

    train: str
    test: str
    objective: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    encoding: str = "utf-8"
    base_path: str | None = None
    max_length: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    dtype: str = "auto"
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise GenboundError(
                f"--objective: expected one of {', '.join(OBJECTIVES)}; found {self.objective!r}."
            )
        if (self.prompt_column is None) != (self.response_column is None):
            raise GenboundError(
                "--prompt-column and --response-column go together; found only "
                + ("--prompt-column." if self.prompt_column is not None else "--response-column.")
            )
        if self.chat_template and self.prompt_column is None:
            raise GenboundError(
                "--chat-template formats a causal LM's prompt and response pairs; give "
                "--prompt-column and --response-column."
            )
        if self.prompt_column is not None and self.objective == SEQUENCE_CLASSIFICATION:
            raise GenboundError(
                "--prompt-column/--response-column describe a causal language model's data; "
                "found --objective sequence_classification."
            )

    @cached_property
    def n_train(self) -> int:
        """Training texts (rows of the training file; lines of a .txt file)."""
        from genbound.tasks.texts import read_records

        path = Path(self.train)
        if path.suffix.lower() == ".txt":
            from genbound.tasks.lm_texts import read_lm_texts

            return len(read_lm_texts(path, text_column="text", encoding=self.encoding))
        return len(read_records(path, self.encoding).rows)

    @property
    def description(self) -> str:
        return f"texts from {self.train} and {self.test} (objective: {self.objective})"

    def resolve(self, checkpoint: Checkpoint | None) -> tuple[str, str]:
        """(objective, why) for ``checkpoint``: asked for, stated by it, or the default."""
        stated, where = infer_objective(checkpoint)
        head = _head_update(checkpoint) if checkpoint is not None else None
        if self.objective == "auto":
            if self.prompt_column is not None:
                return CAUSAL_LM, "prompt and response columns given"
            if stated is not None:
                return stated, f"inferred from {where}"
            return SEQUENCE_CLASSIFICATION, "the default (the checkpoint does not say)"
        if self.objective == CAUSAL_LM and (stated == SEQUENCE_CLASSIFICATION or head):
            found = (
                f"{where} says sequence classification"
                if head is None
                else (f"it trains a classification head ({head!r})")
            )
            raise GenboundError(
                f"{checkpoint.path}: --objective causal_lm, but {found}; a classifier's "
                "next-token loss means nothing. Drop --objective causal_lm (or give a causal "
                "language model's checkpoint)."
            )
        return self.objective, "given (--objective)"

    def for_checkpoint(self, checkpoint: Checkpoint | None):
        """The task for ``checkpoint``: a :class:`~genbound.tasks.causal_lm.CausalLMTask` or
        a :class:`~genbound.tasks.hf_text.TextClassificationTask`."""
        kind, why = self.resolve(checkpoint)
        log.info("objective %s (%s)", kind, why)
        if kind == CAUSAL_LM:
            return self._causal_lm(checkpoint)
        from genbound.tasks.hf_text import text_files

        task = text_files(
            self.train,
            self.test,
            text_column=self.text_column,
            label_column=self.label_column,
            label_names=list(self.label_names) if self.label_names else None,
            encoding=self.encoding,
            base_path=self.base_path,
            max_length=self.max_length or CLASSIFIER_MAX_LENGTH,
            batch_size=self.batch_size,
        )
        return _on_device(task, self.device)

    def _causal_lm(self, checkpoint: Checkpoint | None):
        from genbound.tasks.causal_lm import CausalLMTask
        from genbound.tasks.hf_text import base_folder
        from genbound.tasks.lm_texts import read_lm_texts

        columns = (
            {"prompt_column": self.prompt_column, "response_column": self.response_column}
            if self.prompt_column is not None
            else {"text_column": self.text_column}
        )
        train = read_lm_texts(self.train, encoding=self.encoding, **columns)
        test = read_lm_texts(self.test, encoding=self.encoding, **columns)
        base = base_folder(self.base_path, checkpoint, "causal language model task")
        return CausalLMTask(
            train,
            test,
            base_path=base,
            max_length=self.max_length,
            device=self.device,
            dtype=self.dtype,
            chat_template=self.chat_template,
        )

    def objectives(self, checkpoint: Checkpoint | None):
        """The resolved task's (train, test) objectives."""
        return self.for_checkpoint(checkpoint).objectives(checkpoint)


def _on_device(task, device: str):
    import dataclasses

    return task if device == "cpu" else dataclasses.replace(task, device=device)


def text_data(
    train: str,
    test: str,
    *,
    objective: str = "auto",
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    encoding: str = "utf-8",
    base_path: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    dtype: str = "auto",
    chat_template: bool = False,
) -> TextData:
    """The task of ``--data TRAIN TEST`` (see :class:`TextData`)."""
    return TextData(
        str(train),
        str(test),
        objective=objective,
        text_column=text_column,
        label_column=label_column,
        label_names=tuple(label_names) if label_names else None,
        prompt_column=prompt_column,
        response_column=response_column,
        encoding=encoding,
        base_path=base_path,
        max_length=max_length,
        batch_size=batch_size,
        dtype=dtype,
        chat_template=chat_template,
    )
