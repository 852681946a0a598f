"""Turn result dataclasses into JSON-ready values, and write JSON documents.

The converter is :mod:`genbound.jsonio`, the one every JSON file genbound writes goes
through (non-finite floats as the strings ``"inf"``, ``"-inf"`` and ``"nan"``); its names
are kept here for the report code that imports them from this module.
"""

from __future__ import annotations

from genbound.jsonio import dumps_json, jsonable

__all__ = ["dumps_json", "jsonable"]
