"""User-facing errors.

Every problem caused by the user's input (a missing file, a config that does not
match its tensors, NaN weights, ...) is raised as a :class:`GenboundError` whose
message is one paragraph naming the file and key, what was expected and what was
found. The CLI prints that paragraph and exits with status 2; it never shows a
traceback for these.
"""

from __future__ import annotations

from os import PathLike


class GenboundError(Exception):
    """An error in the user's input, with a message fit to show as is."""

    exit_code = 2


class CheckpointError(GenboundError):
    """A checkpoint (or its base model) cannot be read as what it claims to be."""


def input_error(
    path: str | PathLike | None,
    problem: str,
    *,
    key: str | None = None,
    expected: str | None = None,
    found: str | None = None,
    hint: str | None = None,
    cls: type[GenboundError] = CheckpointError,
) -> GenboundError:
    """Build a one-paragraph error: ``FILE [key K]: PROBLEM; expected E, found F. HINT``."""
    where = str(path) if path is not None else "<input>"
    if key is not None:
        where += f" [key {key!r}]"
    parts = [f"{where}: {problem}"]
    if expected is not None or found is not None:
        parts.append(f"expected {expected or '?'}, found {found or '?'}")
    text = "; ".join(parts) + "."
    if hint:
        text += " " + hint.rstrip(".") + "."
    return cls(text)
