"""Where genbound keeps what it may recompute: W0 spectra, logs of internal errors."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$GENBOUND_CACHE``, else ``$XDG_CACHE_HOME/genbound``, else ``~/.cache/genbound``."""
    root = os.environ.get("GENBOUND_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genbound"
