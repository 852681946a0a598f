"""genbound's own run directory: ``genbound.json`` plus tensors in safetensors.

The schema (``"schema": "genbound.run/1"``) is documented in docs/checkpoint-format.md and
stated for the validator in :data:`MANIFEST_SCHEMA`. :func:`load_run` reads a run as a
:class:`~genbound.checkpoint.model.Checkpoint`; :mod:`genbound.checkpoint.manifest` writes
one. Non-finite metrics, written as ``"inf"``, ``"-inf"`` and ``"nan"``, are read back as
floats.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from genbound.adapters.registry import get_variant
from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Checkpoint, Hyperparams
from genbound.checkpoint.peft_tensors import check_against_base
from genbound.checkpoint.schema import (
    ANY_LIST,
    BOOL,
    FILE_NAME,
    INT,
    JSON_SCALAR,
    NONNEGATIVE_INT,
    NUMBER,
    POSITIVE_INT,
    STRING,
    STRINGS,
    AnyOf,
    ListOf,
    MapOf,
    Mismatch,
    Nullable,
    Record,
    Ref,
    check_json,
    one_of,
    shown,
)
from genbound.checkpoint.subspace import SUBSPACE_SCHEMA, SubspaceCode, expand, stored_z
from genbound.checkpoint.tensors import TensorFile, read_json
from genbound.checkpoint.updates import Loader, Update, update_kinds
from genbound.errors import GenboundError, input_error
from genbound.jsonio import decoded
from genbound.trust import BASE_MODELS, checked_target, import_function

log = logging.getLogger(__name__)

MANIFEST = "genbound.json"
SCHEMA = "genbound.run/1"
TENSORS = "updates.safetensors"

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


# ---------------------------------------------------------------------------- schema
#: The low-rank part of a DoRA link.
LOWRANK_LINK_SCHEMA = Record(
    "a lowrank link object",
    {"kind": one_of("lowrank"), "B": STRING, "A": STRING, "scale": NUMBER, "trained": STRINGS},
    required=("kind",),
)


@dataclass(frozen=True)
class _Kind:
    """A link kind: one of the update kinds defined when the manifest is checked."""

    @property
    def text(self) -> str:
        return " or ".join(repr(k) for k in update_kinds())

    def mismatch(self, value: Any, key: str) -> Mismatch | None:
        ok = isinstance(value, str) and value in update_kinds()
        return None if ok else Mismatch(key, self.text, shown(value))


#: Link fields that name tensors (checked here to be strings; other tensor fields, such as
#: VeRA's ``b`` and ``d``, are checked by the reader of their kind).
TENSOR_FIELDS = ("B", "A", "indices", "delta", "value", "initial", "magnitude", "b", "d")

#: A link: how one update's dW is stored (docs/checkpoint-format.md, "Link kinds"). Which
#: tensor keys each kind needs is checked where the link is read.
LINK_SCHEMA: Record = Record(
    "a link object",
    {
        "kind": _Kind(),
        **dict.fromkeys(TENSOR_FIELDS, STRING),
        "scale": NUMBER,
        "trained": STRINGS,
        "links": ListOf(
            "a non-empty list of link objects", Ref("a link object", lambda: LINK_SCHEMA), 1
        ),
        "lowrank": LOWRANK_LINK_SCHEMA,
        "trainable": Nullable(NONNEGATIVE_INT),
        "new": BOOL,
    },
    required=("kind",),
)

UPDATE_SCHEMA = Record(
    "an update object",
    {
        "param": STRING,
        "shape": ListOf("a non-empty list of positive integers", POSITIVE_INT, 1),
        "transposed": BOOL,
        "link": LINK_SCHEMA,
    },
    required=("shape", "link"),
)

HPARAMS_SCHEMA = Record(
    "an object of hyper-parameters",
    {
        "rank": Nullable(POSITIVE_INT),
        "alpha": Nullable(NUMBER),
        "scale": Nullable(NUMBER),
        "rslora": BOOL,
        "chain": POSITIVE_INT,
        "chain_planned": POSITIVE_INT,
        "selector_seed": Nullable(INT),
        "targets": Nullable(STRINGS),
        "layers": STRINGS,
        "head": STRINGS,
        "lr_ratio": NUMBER,
        "subspace": POSITIVE_INT,
        "qat_bits": POSITIVE_INT,
    },
)

#: Every field of ``genbound.json`` that genbound reads, with its type; other fields are
#: ignored. :func:`load_run` checks a manifest against it before reading anything else.
MANIFEST_SCHEMA = Record(
    "a JSON object",
    {
        "schema": STRING,
        "variant": STRING,
        "updates": MapOf("an object of updates by name", UPDATE_SCHEMA),
        "dtype": one_of(*_DTYPES),
        "n_train": Nullable(POSITIVE_INT),
        "seed": Nullable(INT),
        "base_model": Nullable(
            AnyOf(
                'a path string or an object {"path": ..., "python": "module:function"}',
                (
                    STRING,
                    Record(
                        'an object {"path": ..., "python": ...}',
                        {"path": Nullable(STRING), "python": Nullable(STRING)},
                    ),
                ),
            )
        ),
        "hparams": Nullable(HPARAMS_SCHEMA),
        "metrics": Nullable(
            Record(
                "an object of metrics",
                {},
                others=AnyOf(
                    "a string, number, true, false, null or a list", (JSON_SCALAR, ANY_LIST)
                ),
            )
        ),
        "data": Nullable(
            Record(
                'a task reference {"task": "module:function", "kwargs": {...}}',
                {"task": STRING, "kwargs": Nullable(Record("an object", {}))},
                required=("task",),
            )
        ),
        "trajectory": Nullable(
            Record(
                "an object",
                {
                    "file": FILE_NAME,
                    "steps": ListOf("a list of non-negative integers", NONNEGATIVE_INT),
                    "params": STRINGS,
                },
                required=("file", "steps", "params"),
            )
        ),
        "tensor_file": FILE_NAME,
        "subspace": Nullable(SUBSPACE_SCHEMA),
        "initial": MapOf("an object of trained factors to tensor keys", STRING),
    },
    required=("schema", "variant", "updates"),
)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).exists()


# ---------------------------------------------------------------------------- reading
def resolve_base_ref(
    ref: Mapping[str, Any] | str | None,
    run_dir: Path,
    *,
    trust_code: bool = False,
    where: str = "base_model.python",
) -> Path | None:
    """Find the base model from a manifest reference: a path (absolute or relative to
    the run), else ``{"python": "module:function"}`` returning a path (a package that ships
    the model). None when neither finds it (the reason is logged).

    The function is imported only when it is one of genbound's own base-model providers
    (:data:`genbound.trust.BASE_MODELS`) or ``trust_code`` is True; otherwise
    :class:`genbound.trust.UntrustedCode` is raised and nothing is imported.
    """
    if not ref:
        return None
    if isinstance(ref, str):
        ref = {"path": ref}
    path = ref.get("path")
    if path:
        p = Path(path)
        p = p if p.is_absolute() else run_dir / p
        if p.exists():
            return p
    target = ref.get("python")
    if not target:
        return None
    fn = import_function(
        checked_target(target, BASE_MODELS, where=where, trusted=trust_code), where
    )
    try:
        found = fn()
    except GenboundError as exc:  # e.g. the package that ships the model is not installed
        log.warning("%s: %s", where, exc)
        return None
    if not isinstance(found, str | PathLike):
        raise GenboundError(
            f"{where}: {target} returned a {type(found).__name__}; expected a path."
        )
    return Path(found)


def load_run(
    path: Path, *, base: BaseModel | None, base_arg: bool, trust_code: bool = False
) -> Checkpoint:
    """Read a genbound run directory.

    Args:
        path: the run folder.
        base: the base model the user gave, or None.
        base_arg: True when the user gave a base (the manifest's is then not looked up).
        trust_code: let ``base_model.python`` name code that is not genbound's own.
    """
    mpath = path / MANIFEST
    man = read_json(mpath)
    if man.get("schema") != SCHEMA:
        raise input_error(
            mpath,
            "unsupported manifest schema",
            key="schema",
            expected=repr(SCHEMA),
            found=repr(man.get("schema")),
        )
    check_json(man, MANIFEST_SCHEMA, mpath)
    try:
        get_variant(man["variant"])
    except GenboundError as exc:
        raise input_error(mpath, "unknown variant", key="variant", found=str(exc)) from None
    notes: list[str] = []
    if base is None and not base_arg:
        base_path = resolve_base_ref(
            man.get("base_model"),
            path,
            trust_code=trust_code,
            where=f"{mpath} [key 'base_model.python']",
        )
        if base_path is not None:
            base = BaseModel(base_path)
        elif man.get("base_model"):
            notes.append(f"base model {man['base_model']} not found; pass --base PATH")
    dtype_name = man.get("dtype", "float32")

    tfile = path / man.get("tensor_file", TENSORS)
    subspace, code = man.get("subspace"), None
    updates = _read_updates(man, tfile, mpath, base)
    if subspace:
        with TensorFile(tfile) as tf:
            zs = stored_z(subspace, tf)
        code = SubspaceCode(
            kind=subspace["kind"],
            d=int(subspace["d"]),
            D=int(subspace["D"]),
            seed=int(subspace["seed"]),
            z=zs,
            rebuild=functools.partial(_read_updates, man, tfile, mpath, base),
        )
    if base is not None:
        for u in updates.values():
            check_against_base(u, base)
    initial = _initial_factors(man.get("initial") or {}, updates, tfile, mpath)

    hp_raw = dict(man.get("hparams") or {})
    known = {
        f: hp_raw.pop(f)
        for f in ("rank", "alpha", "scale", "rslora", "chain", "selector_seed", "targets")
        if f in hp_raw
    }
    known["targets"] = tuple(known.get("targets") or ())
    hp = Hyperparams(**known, extra=hp_raw)
    return Checkpoint(
        path=path,
        format="genbound",
        variant=man["variant"],
        hparams=hp,
        updates=updates,
        dtype=_DTYPES[dtype_name],
        base=base,
        base_ref=json.dumps(man.get("base_model")) if man.get("base_model") else None,
        n_train=man.get("n_train"),
        seed=man.get("seed"),
        metrics=decoded(man.get("metrics") or {}),
        data=man.get("data"),
        trajectory=man.get("trajectory"),
        notes=tuple(notes),
        subspace=code,
        initial=initial,
    )


def _initial_factors(
    spec: Mapping[str, str], updates: Mapping[str, Update], tfile: Path, mpath: Path
) -> dict[str, torch.Tensor] | None:
    """The manifest's ``initial`` field read: trained factor -> its value when its link
    started, each checked to name a trained tensor of the run, with its shape."""
    if not spec:
        return None
    from genbound.checkpoint.updates import SEP

    trained = {
        f"{name}{SEP}{k}": tuple(v.shape)
        for name, u in updates.items()
        for k, v in u.trained_tensors().items()
    }
    out = {}
    with TensorFile(tfile) as tf:
        for name, key in spec.items():
            if name not in trained:
                raise input_error(
                    mpath,
                    "initial value of an unknown tensor",
                    key=f"initial.{name}",
                    expected="a trained tensor of the run ("
                    + ", ".join(list(trained)[:4])
                    + ", ...)",
                    found=repr(name),
                )
            value = tf[key]
            if tuple(value.shape) != trained[name]:
                raise input_error(
                    mpath,
                    "tensor does not match the manifest",
                    key=f"initial.{name}",
                    expected=f"tensor {key!r} of shape {trained[name]}",
                    found=str(tuple(value.shape)),
                )
            out[name] = value
    return out


def _read_updates(
    man: Mapping[str, Any],
    tfile: Path,
    mpath: Path,
    base: BaseModel | None,
    zs: Sequence[torch.Tensor] | None = None,
) -> dict[str, Update]:
    """The manifest's updates (already checked against the schema) read from ``tfile``; a
    subspace run's trained tensors are expanded from its stored z, or from ``zs``."""
    subspace = man.get("subspace")
    with TensorFile(tfile) as tf:
        expanded = expand(subspace, tf, mpath, zs) if subspace else {}
        reader = _LinkReader(tf, mpath, base, expanded)
        return {name: reader.update(name, spec) for name, spec in man["updates"].items()}


class _LinkReader:
    """Builds Update objects from the manifest's update specs (the
    :class:`~genbound.checkpoint.updates.LinkReader` each update kind reads its link with)."""

    def __init__(
        self,
        tf: TensorFile,
        mpath: Path,
        base: BaseModel | None,
        expanded: Mapping[str, torch.Tensor] | None = None,
    ):
        self.tf, self.mpath, self.base = tf, mpath, base
        #: a subspace run's trained tensors (theta_0 + P z), by key: read before ``tf``.
        self.expanded = dict(expanded or {})

    def field(self, spec: Mapping, key: str, where: str) -> Any:
        if key not in spec:
            raise input_error(
                self.mpath,
                "required field missing",
                key=f"{where}.{key}",
                expected=f"a {key!r} field",
                found=f"fields {sorted(spec)}",
            )
        return spec[key]

    def tensor(self, spec: Mapping, key: str, where: str) -> torch.Tensor:
        name = self._tensor_key(spec, key, where)
        return self.expanded[name] if name in self.expanded else self.tf[name]

    def lazy(self, spec: Mapping, key: str, where: str, shape: tuple[int, ...]) -> Loader:
        name = self._tensor_key(spec, key, where)
        if name in self.expanded:
            value = self.expanded[name]
            found = f"{tuple(value.shape)}"
            self.expect(tuple(value.shape) == tuple(shape), where, f"{key} of shape {shape}", found)
            return lambda: value
        stored = tuple(self.tf.shape(name))
        self.expect(stored == tuple(shape), where, f"{key} of shape {tuple(shape)}", f"{stored}")
        self.tf[name]  # NaN/Inf fail at load time
        path = self.tf.path
        return lambda: TensorFile(path)[name]

    def update(self, name: str, spec: Mapping) -> Update:
        """One update; ``spec`` has been checked against :data:`UPDATE_SCHEMA`."""
        shape = tuple(spec["shape"])
        common = dict(
            name=name,
            param=spec.get("param", name + ".weight" if len(shape) == 2 else name),
            shape=shape,
            transposed=spec.get("transposed", False),
            base=self.base,
        )
        return self.link(spec["link"], common, f"updates.{name}.link")

    def link(self, spec: Mapping, common: dict, where: str) -> Update:
        kinds = update_kinds()
        kind = self.field(spec, "kind", where)
        if kind not in kinds:
            raise input_error(
                self.mpath,
                "unknown update kind",
                key=f"{where}.kind",
                expected=" or ".join(kinds),
                found=repr(kind),
            )
        return kinds[kind].from_link(spec, common, self, where)

    def expect(self, ok: bool, where: str, expected: str, found: str) -> None:
        if not ok:
            raise input_error(
                self.mpath,
                "tensor does not match the manifest",
                key=where,
                expected=expected,
                found=found,
            )

    def _tensor_key(self, spec: Mapping, key: str, where: str) -> str:
        name = self.field(spec, key, where)
        if not isinstance(name, str):
            raise input_error(
                self.mpath,
                "wrong type",
                key=f"{where}.{key}",
                expected="a tensor name (a string)",
                found=shown(name),
            )
        return name
