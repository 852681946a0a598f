"""Reading a subspace run: its trained tensors rebuilt as theta_0 + P z.

A run trained by ``genbound.adapters.apply(..., subspace=d)`` stores z (d,), the seed and
kind of P, and theta_0 as the initial value of each trained tensor; its manifest's
``subspace`` field (docs/checkpoint-format.md, "Subspace runs") lists those tensors in
theta's order. :func:`expand` recomputes them exactly as the live run did (float64
theta_0 + P z, cut and cast to each initial tensor's dtype), so they are bit-identical to
the factors the run had when it was saved (on the same build of torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genbound.checkpoint.schema import (
    INT,
    POSITIVE_INT,
    STRING,
    ListOf,
    Record,
    one_of,
)
from genbound.checkpoint.tensors import TensorFile
from genbound.errors import input_error

#: The manifest's ``subspace`` field.
SUBSPACE_SCHEMA = Record(
    "a subspace object",
    {
        "kind": one_of("kron"),
        "d": POSITIVE_INT,
        "D": POSITIVE_INT,
        "seed": INT,
        "z": STRING,
        "tensors": ListOf(
            "a non-empty list of trained tensors",
            Record(
                'an object {"key": ..., "initial": ..., "shape": [...]}',
                {
                    "key": STRING,
                    "initial": STRING,
                    "shape": ListOf("a list of positive integers", POSITIVE_INT),
                },
                required=("key", "initial", "shape"),
            ),
            1,
        ),
    },
    required=("kind", "d", "D", "seed", "z", "tensors"),
)


def expand(spec: Mapping[str, Any], tf: TensorFile, mpath: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of a subspace run by their run key (``spec``: the manifest's
    ``subspace`` field, already checked against :data:`SUBSPACE_SCHEMA`)."""
    from genbound.adapters.projection import make_projection

    def fail(key: str, expected: str, found: str):
        return input_error(
            mpath,
            "subspace tensors do not match",
            key=f"subspace.{key}",
            expected=expected,
            found=found,
        )

    d, D = int(spec["d"]), int(spec["D"])
    z = tf[spec["z"]]
    if tuple(z.shape) != (d,):
        raise fail("z", f"tensor {spec['z']!r} of shape ({d},)", str(tuple(z.shape)))
    initial = []
    for i, entry in enumerate(spec["tensors"]):
        t = tf[entry["initial"]]
        if list(t.shape) != list(entry["shape"]):
            raise fail(
                f"tensors[{i}].shape",
                f"tensor {entry['initial']!r} of shape {entry['shape']}",
                str(list(t.shape)),
            )
        initial.append(t)
    total = sum(t.numel() for t in initial)
    if total != D or d > D:
        raise fail("D", f"D = {D} = the initial tensors' size, >= d = {d}", f"size {total}")
    theta0 = torch.cat([t.double().reshape(-1) for t in initial])
    with torch.no_grad():
        theta = theta0 + make_projection(spec["kind"], D, d, int(spec["seed"])).matvec(z.double())
    out, offset = {}, 0
    for entry, t in zip(spec["tensors"], initial, strict=True):
        n = t.numel()
        out[entry["key"]] = theta[offset : offset + n].view(t.shape).to(t.dtype).clone()
        offset += n
    return out
