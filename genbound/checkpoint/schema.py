"""Declarative types for JSON files that checkpoints carry, and the one validator of them.

A schema is built from a few node types: :class:`Leaf` (a test of one value),
:class:`Nullable`, :class:`ListOf`, :class:`Record` (an object with named fields),
:class:`MapOf` (an object of names to values of one type), :class:`AnyOf` and :class:`Ref`
(for recursive schemas). :func:`check_json` walks a parsed JSON value against a schema and
raises one named error for the first mismatch, with the dotted key of the value
(``updates.fc1.link.links[0].scale``), what the schema expects and what was found.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any, Protocol

from genbound.errors import input_error


@dataclass(frozen=True)
class Mismatch:
    """Where a value differs from its schema: the value's key, what was expected and found."""

    key: str
    expected: str
    found: str
    problem: str = "wrong type or value"


class Node(Protocol):
    """A schema node: ``text`` says what it accepts ("a positive integer")."""

    text: str

    def mismatch(self, value: Any, key: str) -> Mismatch | None: ...


def shown(value: Any, limit: int = 60) -> str:
    """A JSON value as found in the file, shortened to ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean, null."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def is_count(value: Any) -> bool:
    """A non-negative JSON integer (not a boolean, not a float)."""
    return _is_int(value) and value >= 0


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


@dataclass(frozen=True)
class Leaf:
    """A value accepted by ``test`` (e.g. an integer, a string from a set)."""

    text: str
    test: Callable[[Any], bool]

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        return None if self.test(value) else Mismatch(key, self.text, shown(value))


@dataclass(frozen=True)
class Nullable:
    """``null`` or a value of ``inner``."""

    inner: Node

    @property
    def text(self) -> str:
        return f"{self.inner.text} or null"

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        m = None if value is None else self.inner.mismatch(value, key)
        return replace(m, expected=self.text) if m is not None and m.key == key else m


@dataclass(frozen=True)
class ListOf:
    """A list of at least ``min_items`` values of ``item`` (keys ``key[i]``)."""

    text: str
    item: Node
    min_items: int = 0

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        if not isinstance(value, list) or len(value) < self.min_items:
            return Mismatch(key, self.text, shown(value))
        for i, v in enumerate(value):
            if (m := self.item.mismatch(v, f"{key}[{i}]")) is not None:
                return m
        return None


@dataclass(frozen=True)
class Record:
    """An object with named ``fields`` (``required`` ones must be present); fields it does
    not name are checked against ``others`` (None: any JSON value)."""

    text: str
    fields: Mapping[str, Node]
    required: tuple[str, ...] = ()
    others: Node | None = None

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        if not isinstance(value, dict):
            return Mismatch(key, self.text, shown(value))
        for name in self.required:
            if name not in value:
                return Mismatch(
                    _join(key, name),
                    f"a {name!r} field ({self.fields[name].text})",
                    f"fields {sorted(value)}",
                    problem="required field missing",
                )
        for name, v in value.items():
            node = self.fields.get(name, self.others)
            if node is not None and (m := node.mismatch(v, _join(key, name))) is not None:
                return m
        return None


@dataclass(frozen=True)
class MapOf:
    """An object whose values are all of ``value`` (keys ``key.<name>``)."""

    text: str
    value: Node

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        if not isinstance(value, dict):
            return Mismatch(key, self.text, shown(value))
        for name, v in value.items():
            if (m := self.value.mismatch(v, _join(key, name))) is not None:
                return m
        return None


@dataclass(frozen=True)
class AnyOf:
    """A value of one of ``options``. When none accepts it, the mismatch found inside an
    option that accepted its outer type (an object with a bad field) is the one reported."""

    text: str
    options: tuple[Node, ...]

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        found = [o.mismatch(value, key) for o in self.options]
        if any(m is None for m in found):
            return None
        inner = [m for m in found if m is not None and m.key != key]
        return inner[0] if inner else Mismatch(key, self.text, shown(value))


@dataclass(frozen=True)
class Ref:
    """The node that ``get()`` returns, looked up when used (a schema that contains itself)."""

    text: str
    get: Callable[[], Node] = field(repr=False)

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        return self.get().mismatch(value, key)


def check_json(value: Any, schema: Node, path: str | PathLike, key: str = "") -> None:
    """Raise a named error (file ``path``, the value's key) unless ``value`` fits ``schema``."""
    try:
        m = schema.mismatch(value, key)
    except RecursionError:
        raise input_error(
            path, "nested too deeply", key=key or None, expected="a few levels", found="more"
        ) from None
    if m is not None:
        raise input_error(path, m.problem, key=m.key or None, expected=m.expected, found=m.found)


# ---------------------------------------------------------------------------- common leaves
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


STRING = Leaf("a string", lambda v: isinstance(v, str))
BOOL = Leaf("true or false", lambda v: isinstance(v, bool))
INT = Leaf("an integer", _is_int)
POSITIVE_INT = Leaf("a positive integer", lambda v: _is_int(v) and v > 0)
NONNEGATIVE_INT = Leaf("a non-negative integer", is_count)
NUMBER = Leaf("a finite number", _is_number)
JSON_SCALAR = Leaf(
    "a string, number, true, false or null",
    lambda v: v is None or isinstance(v, str | int | float | bool),
)
ANY_LIST = Leaf("a list", lambda v: isinstance(v, list))
STRINGS = ListOf("a list of strings", STRING)


def one_of(*choices: str) -> Leaf:
    """A string among ``choices``."""
    return Leaf(
        " or ".join(repr(c) for c in choices), lambda v: isinstance(v, str) and v in choices
    )


def _is_plain_file_name(v: Any) -> bool:
    return (
        isinstance(v, str)
        and v not in ("", ".", "..")
        and not any(c in v for c in "/\\\0")
        and ":" not in v
    )


FILE_NAME = Leaf(
    "a plain file name inside the folder (no path separators, no '..')", _is_plain_file_name
)
