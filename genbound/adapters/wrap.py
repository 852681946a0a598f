"""``apply``: wrap the matching layers of any ``nn.Module`` with an adapter method.

Target patterns follow PEFT: a pattern matches a module path when it equals it, is a
suffix of it at a ``.`` boundary (``"query"`` matches ``encoder.layer.0.attention.self.query``)
or matches it as a regular expression (``re.fullmatch``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from genbound.adapters.handle import AdapterHandle, DenseTensor
from genbound.adapters.layers import AdapterLayer, is_conv1d, is_linear, linear_shape
from genbound.adapters.registry import Variant, get_variant, variants
from genbound.adapters.subspace import attach, check_dimension, check_subspace
from genbound.errors import GenboundError

log = logging.getLogger(__name__)

#: Module paths taken as the head when ``head=None``.
DEFAULT_HEADS = ("classifier", "score", "head")


def trainable_variants() -> tuple[str, ...]:
    """The registry names of the variants ``apply`` can train."""
    return tuple(name for name, v in variants().items() if v.trainable)


def matches(name: str, pattern: str) -> bool:
    """True when ``pattern`` names module path ``name`` (equal, dotted suffix, or regex)."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def find_heads(model: nn.Module, head: Sequence[str] | None) -> list[str]:
    """Module paths of the head: ``head`` patterns, or :data:`DEFAULT_HEADS` when None.

    Only outermost matches are kept (a head's children are part of it).
    """
    names = [n for n, _ in model.named_modules() if n]
    if head is None:
        found = [n for n in names if n in DEFAULT_HEADS]
    else:
        found = [n for n in names if any(matches(n, p) for p in head)]
        if head and not found:
            raise GenboundError(
                f"apply: expected head patterns {list(head)} to match a module of the model, "
                f"found none; top-level modules are: {_top_level(model)}."
            )
    return [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]


def find_targets(model: nn.Module, targets: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Paths of the Linear/Conv1D modules matching ``targets``, outside ``exclude`` (heads)."""
    out = []
    for name, module in model.named_modules():
        if not name or not is_linear(module):
            continue
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        if any(matches(name, p) for p in targets):
            out.append(name)
    return out


def apply(
    model: nn.Module,
    method: str,
    *,
    rank: int | None = None,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    chain: int = 1,
    seed: int | None = None,
    head: Sequence[str] | None = None,
    rslora: bool = False,
    lr_ratio: float | None = None,
    subspace: int | None = None,
) -> AdapterHandle:
    """Wrap the matching layers of ``model`` IN PLACE with adapter ``method``.

    Every parameter of the model is frozen, then the adapters' factors, the head and (for
    ``fft``) the target layers' weights and biases train. Arguments are checked before the
    model is touched; a bad one raises :class:`~genbound.errors.GenboundError`.

    Args:
        model: any ``nn.Module``; its ``nn.Linear`` and HF ``Conv1D`` layers can be adapted.
        method: a registry name (see ``genbound.adapters.variants()``) whose variant is
            ``trainable`` (all but dora).
        rank: r (not used by ``fft`` and ``head``).
        alpha: scale numerator: s = alpha / r (alpha / sqrt(r) with ``rslora``);
            default alpha = r (s = 1). PaCA always uses s = 1.
        targets: module patterns to adapt (see module docstring). For ``fft`` None means
            every parameter of the model; ``head`` ignores them.
        chain: k, the number of links of a chained method (cola, rac, c3la, random_c3la);
            must be 1 for the others.
        seed: the run's seed: A's initialisation, random selectors and window orders come
            from ``torch.Generator().manual_seed(seed)``, in module order (None: 0; a
            subspace run needs it given).
        head: patterns of the head modules, which train in full in every method; default:
            a module called ``classifier``, ``score`` or ``head`` if there is one; ``()``
            for none.
        rslora: s = alpha / sqrt(r).
        lr_ratio: LoRA+ ratio lr_B / lr (default: the variant's, 16); only for a variant
            with an ``lr_ratio`` (``lora_plus``).
        subspace: d: train the run's tensors (adapter factors and head, D scalars) as
            theta_0 + P z with z (d,) the only trained parameter and P a seeded structured
            projection (:mod:`genbound.adapters.subspace`); 1 <= d <= D. Not for ``fft``
            and ``lora_plus``.

    Returns:
        An :class:`~genbound.adapters.handle.AdapterHandle`.
    """
    variant = get_variant(method)
    if not variant.trainable:
        raise GenboundError(
            f"apply: variant {variant.name!r} can be analysed but not trained by genbound; "
            f"expected one of {', '.join(trainable_variants())}."
        )
    _check_scalars(variant, rank, chain, lr_ratio, alpha)
    check_subspace(variant, subspace, seed, lr_ratio)
    seed = 0 if seed is None else seed
    wrapped = [n for n, mod in model.named_modules() if isinstance(mod, AdapterLayer)]
    if wrapped:
        raise GenboundError(
            f"apply: expected a model without adapters, found {len(wrapped)} adapted layers "
            f"({wrapped[0]}, ...); merge() the previous handle or start from a fresh model."
        )
    heads = find_heads(model, head)
    if variant.name == "head" and not heads:
        raise GenboundError(
            "apply: method 'head' trains only the head; expected a module called "
            f"{' / '.join(DEFAULT_HEADS)} or head=[patterns], found none; top-level modules "
            f"are: {_top_level(model)}."
        )
    layer_names: list[str] = []
    if variant.name == "fft" and targets is None:
        layer_names = []
    elif variant.name != "head":
        if not targets:
            raise GenboundError(
                f"apply: method {variant.name!r} needs targets=[module patterns]; found "
                f"{targets!r}. Linear layers of the model include: {_linear_names(model)}."
            )
        if isinstance(targets, str):
            targets = [targets]
        layer_names = find_targets(model, targets, heads)
        if not layer_names:
            raise GenboundError(
                f"apply: expected targets {list(targets)} to match nn.Linear or Conv1D layers "
                f"(outside the head {heads}), found none. Linear layers of the model include: "
                f"{_linear_names(model)}."
            )
    if variant.layer is not None:
        for name in layer_names:
            n, m, _ = linear_shape(model.get_submodule(name))
            variant.layer.check_target(variant, name, n, m, rank, chain)

    if subspace is not None:
        check_dimension(subspace, _run_size(model, variant, layer_names, heads, rank))

    # -- arguments are valid: change the model ------------------------------------------
    alpha = float(rank if alpha is None else alpha) if rank else alpha
    scale = None
    if rank:
        scale = alpha / (math.sqrt(rank) if rslora else rank)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(seed))
    layers = {}
    dense: list[DenseTensor] = []
    if variant.name == "fft":
        dense = _fft_tensors(model, layer_names, heads)
    elif variant.layer is not None:
        bases = {name: model.get_submodule(name) for name in layer_names}
        layers = variant.layer.build(
            bases, variant=variant, rank=rank, scale=scale, chain=chain, generator=gen
        )
        for name, layer in layers.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer)
    if variant.name != "fft" or targets is not None:
        dense += _head_tensors(model, heads)
    for d in dense:
        d.parameter.requires_grad_(True)
    hparams = {
        "rank": rank,
        "alpha": alpha,
        "scale": scale,
        "rslora": bool(rslora),
        "chain": int(chain),
        "selector_seed": int(seed) if variant.random_selection else None,
        # what was trained: the head alone for ``head`` (its ``targets`` are not used)
        "targets": list(heads)
        if variant.name == "head"
        else (list(targets) if targets is not None else None),
        "layers": layer_names,
        "head": heads,
    }
    if variant.lr_ratio is not None:
        lr_ratio = variant.lr_ratio if lr_ratio is None else float(lr_ratio)
        hparams["lr_ratio"] = lr_ratio
    log.info("%s: %d layers adapted, head %s", variant.name, len(layers), heads)
    handle = AdapterHandle(
        model=model,
        variant=variant,
        layers=layers,
        dense=dense,
        hparams=hparams,
        seed=int(seed),
        chain=int(chain),
        lr_ratio=lr_ratio,
        heads=heads,
        generator=gen,
    )
    for layer in layers.values():
        layer.record_initial()
    if subspace is not None:
        attach(handle, subspace)
    return handle


# -- checks ---------------------------------------------------------------------------
def _check_scalars(variant: Variant, rank, chain, lr_ratio, alpha) -> None:
    name = variant.name
    needs_rank = variant.layer is not None
    if needs_rank and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise GenboundError(
            f"apply: method {name!r} needs rank=r, a positive integer; found {rank!r}."
        )
    if not isinstance(chain, int) or isinstance(chain, bool) or chain < 1:
        raise GenboundError(f"apply: expected chain=k, a positive integer; found {chain!r}.")
    if chain != 1 and not variant.chained:
        chained = ", ".join(v.name for v in variants().values() if v.chained)
        raise GenboundError(
            f"apply: method {name!r} is not chained; expected chain=1, found chain={chain}. "
            f"Chained methods: {chained}."
        )
    if lr_ratio is not None and (variant.lr_ratio is None or not lr_ratio > 0):
        with_ratio = " or ".join(repr(v.name) for v in variants().values() if v.lr_ratio)
        raise GenboundError(
            f"apply: lr_ratio is the LoRA+ ratio lr_B / lr; expected a positive number with "
            f"method {with_ratio}, found lr_ratio={lr_ratio!r} with method {name!r}."
        )
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise GenboundError(f"apply: expected alpha, a positive number; found {alpha!r}.")


def _run_size(model: nn.Module, variant: Variant, layers: list[str], heads: list[str], rank):
    """D of one link of the run: the registry formula per target plus the head's scalars."""
    total = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    for name in layers:
        n, m, _ = linear_shape(model.get_submodule(name))
        total += variant.trainable_per_layer(n, m, rank, 1)
    return total


def _top_level(model: nn.Module) -> str:
    return ", ".join(n for n, _ in model.named_children()) or "none"


def _linear_names(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, mod in model.named_modules() if n and is_linear(mod)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "none") + more


# -- dense tensors ----------------------------------------------------------------------
def _dense_of_module(prefix: str, module: nn.Module, head: bool) -> list[DenseTensor]:
    out = []
    for pname, p in module.named_parameters(recurse=False):
        full = f"{prefix}.{pname}" if prefix else pname
        if p.ndim > 2:
            raise GenboundError(
                f"apply: tensor {full!r} has {p.ndim} dimensions; expected vectors and matrices "
                "only (genbound's updates are n x m)."
            )
        weight = pname == "weight" and p.ndim == 2
        transposed = weight and (is_conv1d(module) or isinstance(module, nn.Embedding))
        name = prefix if weight and (is_linear(module) or transposed) else full
        out.append(DenseTensor(name, full, p, p.detach().clone(), transposed, head))
    return out


def _head_tensors(model: nn.Module, heads: list[str]) -> list[DenseTensor]:
    out = []
    for h in heads:
        for sub, module in model.get_submodule(h).named_modules():
            out += _dense_of_module(f"{h}.{sub}" if sub else h, module, head=True)
    return out


def _fft_tensors(model: nn.Module, layer_names: list[str], heads: list[str]) -> list[DenseTensor]:
    if layer_names:
        return [t for n in layer_names for t in _dense_of_module(n, model.get_submodule(n), False)]
    out, seen = [], set()
    for name, module in model.named_modules():
        in_head = any(name == h or name.startswith(h + ".") for h in heads)
        for t in _dense_of_module(name, module, head=in_head):
            if id(t.parameter) not in seen:  # tied weights train once
                seen.add(id(t.parameter))
                out.append(t)
    return out
