"""genbound's own run directory: ``genbound.json`` plus tensors in safetensors.

The schema (``"schema": "genbound.run/1"``) is documented in docs/checkpoint-format.md and
stated for the validator in :data:`MANIFEST_SCHEMA`. :func:`load_run` reads a run as a
:class:`~genbound.checkpoint.model.Checkpoint`; :mod:`genbound.checkpoint.manifest` writes
one. Non-finite metrics, written as ``"inf"``, ``"-inf"`` and ``"nan"``, are read back as
floats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from genbound.checkpoint.base import BaseModel
from genbound.checkpoint.model import Checkpoint, Hyperparams
from genbound.checkpoint.peft import check_against_base
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
    Nullable,
    Record,
    Ref,
    check_json,
    one_of,
)
from genbound.checkpoint.tensors import TensorFile, read_json
from genbound.checkpoint.updates import (
    ChainUpdate,
    DenseUpdate,
    DoraUpdate,
    LowRankUpdate,
    SelectorUpdate,
    Update,
)
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

#: A link: how one update's dW is stored (docs/checkpoint-format.md, "Link kinds"). Which
#: tensor keys each kind needs is checked where the link is read.
LINK_SCHEMA: Record = Record(
    "a link object",
    {
        "kind": one_of("lowrank", "selector", "chain", "dense", "dora"),
        **dict.fromkeys(("B", "A", "indices", "delta", "value", "initial", "magnitude"), STRING),
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
    from genbound.adapters.registry import get_variant

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
    updates: dict[str, Update] = {}
    with TensorFile(tfile) as tf:
        reader = _LinkReader(tf, mpath, base)
        for name, spec in man["updates"].items():
            updates[name] = reader.update(name, spec)
    if base is not None:
        for u in updates.values():
            check_against_base(u, base)

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
    )


class _LinkReader:
    """Builds Update objects from the manifest's update specs."""

    def __init__(self, tf: TensorFile, mpath: Path, base: BaseModel | None):
        self.tf, self.mpath, self.base = tf, mpath, base

    def _field(self, spec: Mapping, key: str, where: str) -> Any:
        if key not in spec:
            raise input_error(
                self.mpath,
                "required field missing",
                key=f"{where}.{key}",
                expected=f"a {key!r} field",
                found=f"fields {sorted(spec)}",
            )
        return spec[key]

    def _tensor(self, spec: Mapping, key: str, where: str) -> torch.Tensor:
        return self.tf[self._field(spec, key, where)]

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
        return self._link(spec["link"], common, f"updates.{name}.link")

    def _link(self, spec: Mapping, common: dict, where: str) -> Update:
        kind = spec["kind"]
        n_m = common["shape"]
        trained = tuple(spec.get("trained", ()))
        if kind == "lowrank":
            B, A = self._tensor(spec, "B", where), self._tensor(spec, "A", where)
            self._expect(
                B.shape[0] == n_m[0] and A.shape[1] == n_m[-1] and B.shape[1] == A.shape[0],
                where,
                f"B (n x r) and A (r x m) with (n, m) = {n_m}",
                f"B {tuple(B.shape)}, A {tuple(A.shape)}",
            )
            return LowRankUpdate(
                **common,
                B=B,
                A=A,
                scale=float(spec.get("scale", 1.0)),
                trained=trained or ("A", "B"),
            )
        if kind == "selector":
            B, idx = (
                self._tensor(spec, "B", where),
                self._tensor(spec, "indices", where).to(torch.int64),
            )
            self._expect(
                B.shape[0] == n_m[0] and idx.ndim == 1 and B.shape[1] == idx.numel(),
                where,
                f"B (n x r) and r indices with n = {n_m[0]}",
                f"B {tuple(B.shape)}, indices {tuple(idx.shape)}",
            )
            self._expect(
                bool((idx >= 0).all() and (idx < n_m[1]).all()),
                where,
                f"indices in [0, {n_m[1]})",
                f"range [{int(idx.min())}, {int(idx.max())}]",
            )
            return SelectorUpdate(
                **common,
                B=B,
                indices=idx,
                scale=float(spec.get("scale", 1.0)),
                trained=trained or ("B",),
            )
        if kind == "chain":
            links = self._field(spec, "links", where)
            return ChainUpdate(
                **common,
                links=tuple(
                    self._link(s, common, f"{where}.links[{i}]") for i, s in enumerate(links)
                ),
            )
        if kind == "dense":
            return self._dense(spec, common, where)
        if kind == "dora":
            low = self._link(self._field(spec, "lowrank", where), common, f"{where}.lowrank")
            mag = self._tensor(spec, "magnitude", where).reshape(-1)
            self._expect(
                mag.numel() == n_m[0],
                where,
                f"magnitude of length {n_m[0]}",
                f"length {mag.numel()}",
            )
            return DoraUpdate(**common, lowrank=low, magnitude=mag)
        raise input_error(
            self.mpath,
            "unknown update kind",
            key=f"{where}.kind",
            expected="lowrank, selector, chain, dense or dora",
            found=repr(kind),
        )

    def _dense(self, spec: Mapping, common: dict, where: str) -> DenseUpdate:
        path = self.tf.path
        keys = [k for k in ("delta", "value", "initial") if k in spec]
        for k in keys:
            stored = self.tf.shape(spec[k])
            want = tuple(reversed(common["shape"])) if common["transposed"] else common["shape"]
            self._expect(
                tuple(stored) == tuple(want), where, f"{k} of shape {want}", f"{tuple(stored)}"
            )
            self.tf[spec[k]]  # NaN/Inf fail at load time

        def loader(key: str):
            return lambda: TensorFile(path)[key]

        trainable = spec.get("trainable")
        if "delta" in spec:
            return DenseUpdate(**common, value=loader(spec["delta"]), trainable=trainable)
        value = loader(self._field(spec, "value", where))
        if "initial" in spec:
            return DenseUpdate(
                **common,
                value=value,
                reference=loader(spec["initial"]),
                new=True,
                trainable=trainable,
            )
        new = bool(spec.get("new", False))
        return DenseUpdate(**common, value=value, relative=not new, new=new, trainable=trainable)

    def _expect(self, ok: bool, where: str, expected: str, found: str) -> None:
        if not ok:
            raise input_error(
                self.mpath,
                "tensor does not match the manifest",
                key=where,
                expected=expected,
                found=found,
            )
