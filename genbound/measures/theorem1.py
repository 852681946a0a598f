"""``theorem1``: the corrected Theorem 1 correction terms (log10 Phi_dW, log10 Phi_W0).

Data-free; needs the base model's ||W0||_2 (read from the spectra when they were computed,
so no norm is computed twice). ``report.json``: ``bounds.theorem1``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from genbound.errors import GenboundError
from genbound.measures.base import Measure, Scalar
from genbound.measures.reading import get, number
from genbound.measures.registry import register_measure

if TYPE_CHECKING:
    from genbound.bounds import Theorem1Result


def theorem1_notes(t: Theorem1Result) -> list[str]:
    """Why a Theorem 1 term is exactly zero (its log10 printed as ``-inf``), in words."""
    layers = (
        ", ".join(f"`{n}`" for n in t.layer_names)
        if 0 < len(t.layer_names) <= 3
        else f"{t.num_layers} layers"
    )
    notes = []
    if t.log10_phi_W0 == -math.inf:
        why = (
            f"every layer of the chain ({layers}) is new to the model, so W0 = 0 there and "
            "the network with W0 + dW is the network with dW alone: the bound's second form, "
            "G(W0 + dW) <= G(dW) + Phi_W0, has no correction term"
            if np.all(t.base_norms == 0)
            else "the recursion's terms vanish (a zero norm, Lipschitz constant or input norm)"
        )
        notes.append(f"log10 Phi_W0 = -inf: Phi_W0 = 0 exactly, because {why}.")
    if t.log10_phi_dW == -math.inf:
        why = (
            f"dW = 0 in every layer of the chain ({layers}): G(W0 + dW) = G(W0)"
            if np.all(t.update_norms == 0)
            else "the recursion's terms vanish (a zero norm, Lipschitz constant or input norm)"
        )
        notes.append(f"log10 Phi_dW = -inf: Phi_dW = 0 exactly, because {why}.")
    return notes


class Theorem1(Measure):
    name = "theorem1"
    description = "the corrected Theorem 1 correction terms (needs the base model)"
    after = ("spectra",)
    section = "bounds"
    scalars: ClassVar[dict[str, Scalar]] = {
        "log10_phi_dW": Scalar(
            lambda d: number(get(d, "bounds", "theorem1", "log10_phi_dW")),
            "Theorem 1 log10 Phi_dW",
        )
    }

    def compute(self, ctx) -> Theorem1Result:
        from genbound.bounds import theorem1_from_checkpoint

        ckpt = ctx.checkpoint
        spectra = ctx.results.get("spectra")
        known = None
        if spectra is not None:
            known = {
                x.name: (
                    x.base_spectral_norm if x.base_spectral_norm is not None else 0.0,
                    x.spectral_norm,
                )
                for x in spectra.layers
                if x.base_spectral_norm is not None or ckpt.updates[x.name].is_new
            }
        missing = [
            u.name
            for u in ckpt.updates.values()
            if u.is_matrix and not u.is_new and (known is None or u.name not in known)
        ]
        if ctx.options.base_svd == "cached" and missing and ckpt.base is not None:
            raise GenboundError(
                f"||W0||_2 of {len(missing)} layer(s) (e.g. {missing[0]}) is not in the base "
                "spectrum cache and base_svd='cached' computes none"
            )
        return theorem1_from_checkpoint(ckpt, known=known)

    def json(self, result, ckpt) -> dict:
        from genbound.report.serialize import jsonable

        return {("bounds", "theorem1"): jsonable(result) if result is not None else None}

    def markdown(self, result: Theorem1Result, measures) -> list[str]:
        from genbound.numbers import format_number

        t = result
        lines = [
            f"- Theorem 1 (corrected): log10 Phi_dW = {format_number(t.log10_phi_dW)}, "
            f"log10 Phi_W0 = {format_number(t.log10_phi_W0)} (only the ordering across "
            "methods on one model means anything for transformers)."
        ]
        return lines + [f"- {note}" for note in theorem1_notes(t)]

    def reading(self, result: Theorem1Result, measures) -> list[str]:
        return [
            "Theorem 1's correction terms are products of layer norms: their absolute size "
            f"(log10 Phi_dW = {result.log10_phi_dW:.3g}) is not a usable bound for a "
            "transformer; only their ordering across methods on the same model carries "
            "information."
        ]

    def log_values(self, result: Theorem1Result, *, per_layer: bool, intruder_eps: float) -> dict:
        return {
            "theorem1_log10_phi_dW": result.log10_phi_dW,
            "theorem1_log10_phi_W0": result.log10_phi_W0,
        }


register_measure(Theorem1())
