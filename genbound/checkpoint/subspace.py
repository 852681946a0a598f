"""Reading a subspace run: its trained tensors rebuilt as theta_0 + P z.

A run trained by ``genbound.adapters.apply(..., subspace=d)`` stores z (d,), the seed and
kind of P, and theta_0 as the initial value of each trained tensor; its manifest's
``subspace`` field (docs/checkpoint-format.md, "Subspace runs") lists those tensors in
theta's order. :func:`expand` recomputes them exactly as the live run did (float64
theta_0 + P z, cut and cast to each initial tensor's dtype), so they are bit-identical to
the factors the run had when it was saved (on the same build of torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genbound.checkpoint.schema import (
    INT,
    POSITIVE_INT,
    STRING,
    ListOf,
    Nullable,
    Record,
    one_of,
)
from genbound.checkpoint.tensors import TensorFile
from genbound.checkpoint.update_base import SEP
from genbound.errors import GenboundError, input_error

if TYPE_CHECKING:
    from genbound.checkpoint.updates import Update


def _strings_or_null(what: str) -> ListOf:
    return ListOf(f"a list of {what} (strings or null)", Nullable(STRING))


#: The manifest's ``subspace`` field.
SUBSPACE_SCHEMA = Record(
    "a subspace object",
    {
        "kind": one_of("kron"),
        "d": POSITIVE_INT,
        "D": POSITIVE_INT,
        "seed": INT,
        "tensors": ListOf(
            "a non-empty list of trained tensors",
            Record(
                'an object {"name": ..., "shape": [...]}',
                {"name": STRING, "shape": ListOf("a list of positive integers", POSITIVE_INT)},
                required=("name", "shape"),
            ),
            1,
        ),
        "links": ListOf(
            "a non-empty list of links",
            Record(
                'an object {"z": ..., "keys": [...], "initial": [...]}',
                {
                    "z": STRING,
                    "keys": _strings_or_null("tensor keys"),
                    "initial": _strings_or_null("tensor keys"),
                },
                required=("z", "keys", "initial"),
            ),
            1,
        ),
    },
    required=("kind", "d", "D", "seed", "tensors", "links"),
)


@dataclass(frozen=True)
class SubspaceCode:
    """What a subspace run codes: one z (d,) per link. Everything else (W0, theta_0, P)
    is fixed by the base model and the seed before the data is seen.

    Attributes:
        kind: the projection kind (``"kron"``).
        d: z's size (per link).
        D: the number of expanded trained scalars (theta's size).
        seed: P's seed for link 0 (link i uses ``seed + i``).
        z: the stored z of every link, (d,) each, in the run's dtype.
        rebuild: z of every link -> the checkpoint's updates rebuilt from them (as
            :func:`genbound.load_checkpoint` builds them from the stored z).
    """

    kind: str
    d: int
    D: int
    seed: int
    z: tuple[torch.Tensor, ...]
    rebuild: Callable[[Sequence[torch.Tensor]], Mapping[str, Update]] = field(
        repr=False, compare=False
    )

    @property
    def links(self) -> int:
        return len(self.z)

    @property
    def num_coded(self) -> int:
        """Scalars the run trained and a code must state: d per link."""
        return self.d * self.links

    def key(self, link: int) -> str:
        """The coded-tensor name of link ``link``'s z: ``subspace::link<i>::z``."""
        return SEP.join(("subspace", f"link{link}", "z"))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The coded tensors: every link's z by :meth:`key`."""
        return {self.key(i): z for i, z in enumerate(self.z)}

    def updates_with(self, tensors: Mapping[str, torch.Tensor]) -> Mapping[str, Update]:
        """The updates rebuilt from other values of z (keys of :meth:`tensors`, shapes (d,)),
        e.g. the quantized z of the compression bound."""
        zs = []
        for i in range(self.links):
            key = self.key(i)
            if key not in tensors or tuple(tensors[key].shape) != (self.d,):
                found = tuple(tensors[key].shape) if key in tensors else "no such key"
                raise GenboundError(
                    f"subspace run: expected z of link {i} as {key!r} of shape ({self.d},); "
                    f"found {found}."
                )
            zs.append(tensors[key])
        return self.rebuild(zs)

    def summary(self) -> dict[str, Any]:
        """The subspace's description for a report (no tensors)."""
        return {
            "kind": self.kind,
            "d": self.d,
            "D": self.D,
            "seed": self.seed,
            "links": self.links,
            "num_coded": self.num_coded,
        }


def stored_z(spec: Mapping[str, Any], tf: TensorFile) -> tuple[torch.Tensor, ...]:
    """Every link's stored z (shapes are checked by :func:`expand`)."""
    return tuple(tf[link["z"]] for link in spec["links"])


def expand(
    spec: Mapping[str, Any],
    tf: TensorFile,
    mpath: Path,
    zs: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The trained tensors of a subspace run by their run key (``spec``: the manifest's
    ``subspace`` field, already checked against :data:`SUBSPACE_SCHEMA`).

    Link i: theta_0 = its ``initial`` tensors (a null: the tensor's value at the end of
    link i-1), theta = theta_0 + P_i z_i with P_i seeded ``seed + i`` and z_i the stored
    one, or ``zs[i]`` when given; the pieces whose ``keys`` entry is not null are returned
    under that key.
    """
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
    shapes = [tuple(t["shape"]) for t in spec["tensors"]]
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != D or d > D:
        raise fail("D", f"D = the tensors' total size {sum(sizes)}, >= d = {d}", f"D = {D}")
    out: dict[str, torch.Tensor] = {}
    previous: list[torch.Tensor] | None = None
    for i, link in enumerate(spec["links"]):
        where = f"links[{i}]"
        if len(link["keys"]) != len(shapes) or len(link["initial"]) != len(shapes):
            raise fail(where, f"keys and initial of {len(shapes)} entries", "other lengths")
        z = tf[link["z"]] if zs is None else zs[i]
        if tuple(z.shape) != (d,):
            raise fail(f"{where}.z", f"tensor {link['z']!r} of shape ({d},)", str(tuple(z.shape)))
        initial = []
        for j, (key, shape) in enumerate(zip(link["initial"], shapes, strict=True)):
            if key is None:
                if previous is None:
                    raise fail(f"{where}.initial[{j}]", "a tensor key in the first link", "null")
                initial.append(previous[j])
                continue
            t = tf[key]
            if tuple(t.shape) != shape:
                raise fail(
                    f"{where}.initial[{j}]", f"tensor {key!r} of shape {shape}", str(t.shape)
                )
            initial.append(t)
        theta0 = torch.cat([t.double().reshape(-1) for t in initial])
        P = make_projection(spec["kind"], D, d, int(spec["seed"]) + i)
        with torch.no_grad():
            theta = theta0 + P.matvec(z.double())
        previous, offset = [], 0
        for t, n in zip(initial, sizes, strict=True):
            previous.append(theta[offset : offset + n].view(t.shape).to(t.dtype).clone())
            offset += n
        for key, value in zip(link["keys"], previous, strict=True):
            if key is not None:
                out[key] = value
    return out
