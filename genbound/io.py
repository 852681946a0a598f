"""Write folders atomically: fill a temporary sibling, then rename it into place."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success it replaces ``dest`` whole.

    On any error the temporary folder is removed and ``dest`` is left as it was, so a
    reader never sees a half-written result.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
