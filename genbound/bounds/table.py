"""The source paper's MI-bound table, reproduced for given layer shapes and extended.

The paper lists LoRA, LoRA+, Asym-LoRA, CoLA, RAC, cLA and PaCA, c3LA; this table adds
full fine-tuning, random-cLA, random-c3LA, DoRA, VeRA and head only. D of every row
comes from the registry's ``Variant.trainable_per_layer(n, m, r, k)``; the head's
parameters (``head_params``) are added to every row (the paper leaves the head out,
which ``head_params=0`` reproduces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genbound.adapters.registry import get_variant
from genbound.adapters.registry import variants as registered_variants
from genbound.bounds.mi import mi_bound_value
from genbound.errors import GenboundError
from genbound.numbers import format_number

__all__ = ["EXTENSION_VARIANTS", "PAPER_VARIANTS", "BoundRow", "BoundTable", "bound_table"]

#: The variants of the source paper's bound table, in its order.
PAPER_VARIANTS = ("lora", "lora_plus", "asym", "cola", "rac", "cla", "paca", "c3la")
#: The rows this table adds.
EXTENSION_VARIANTS = ("fft", "random_cla", "random_c3la", "dora", "vera", "head")


@dataclass(frozen=True)
class BoundRow:
    """One variant's row.

    Attributes:
        variant: registry name.
        title: display name.
        d_layers: D summed over the adapted layers (registry formula).
        d_head: head parameters added (``head_params``).
        d_total: d_layers + d_head.
        bound: sqrt(2 sigma^2 q ln2 D_total / N), loss units.
        vacuous: bound > 2 sigma (the loss range B); never clipped.
        in_paper_table: True when the source paper's table lists the variant.
    """

    variant: str
    title: str
    d_layers: int
    d_head: int
    d_total: int
    bound: float
    vacuous: bool
    in_paper_table: bool


@dataclass(frozen=True)
class BoundTable:
    """MI bounds per variant for one model shape, with the inputs that produced them."""

    rows: tuple[BoundRow, ...]
    layer_shapes: tuple[tuple[int, int], ...]
    r: int
    k: int
    q: float
    sigma: float
    n_train: int
    head_params: int
    assumptions: tuple[str, ...]

    @property
    def loss_range(self) -> float:
        """B = 2 sigma."""
        return 2.0 * self.sigma

    def row(self, variant: str) -> BoundRow:
        for row in self.rows:
            if row.variant == variant:
                return row
        raise GenboundError(
            f"bound table: no row for {variant!r}; rows are {[r.variant for r in self.rows]}."
        )

    def to_markdown(self) -> str:
        """A Markdown table: variant, D (layers), D (head), D, bound, vacuous, in paper."""
        lines = [
            f"MI bound sqrt(2 sigma^2 q ln2 D / N) for {len(self.layer_shapes)} adapted layers, "
            f"r={self.r}, k={self.k}, q={self.q:g}, sigma={self.sigma:g}, N={self.n_train:,}",
            "",
            "| variant | D (layers) | D (head) | D | bound | vacuous | in paper |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.title} | {row.d_layers:,} | {row.d_head:,} | {row.d_total:,} | "
                f"{format_number(row.bound)} | {'yes' if row.vacuous else 'no'} | "
                f"{'yes' if row.in_paper_table else 'no'} |"
            )
        return "\n".join(lines) + "\n"


def bound_table(
    layer_shapes: Sequence[tuple[int, int]],
    r: int,
    k: int,
    q: float,
    sigma: float,
    n_train: int,
    *,
    head_params: int = 0,
    variants: Sequence[str] | None = None,
) -> BoundTable:
    """MI bound per variant for adapted layers of the given shapes.

    Args:
        layer_shapes: (n, m) = (outputs, inputs) of every adapted weight.
        r: adapter rank.
        k: chain length (CoLA, RAC, c3LA and random-c3LA; ignored by the others).
        q: bits per trainable scalar.
        sigma: sub-Gaussian parameter of the loss (B / 2 for a loss in [0, B]).
        n_train: N.
        head_params: trained head parameters, added to every row (0 reproduces the paper).
        variants: registry names; default the paper's rows, then the extensions, then any
            other registered variant.

    Returns:
        :class:`BoundTable`; full fine-tuning counts n m per given layer only (pass the
        other trained tensors through ``head_params``).
    """
    shapes = tuple((int(n), int(m)) for n, m in layer_shapes)
    if not shapes:
        raise GenboundError("bound_table: expected at least one (n, m) layer shape; found none.")
    if int(n_train) <= 0 or not sigma > 0 or not q > 0 or int(head_params) < 0:
        raise GenboundError(
            f"bound_table: expected n_train > 0, sigma > 0, q > 0, head_params >= 0; found "
            f"n_train={n_train}, sigma={sigma}, q={q}, head_params={head_params}."
        )
    if variants is None:
        names = list(PAPER_VARIANTS) + list(EXTENSION_VARIANTS)
        names += [v for v in registered_variants() if v not in names]
    else:
        names = list(variants)
    rows = []
    for name in names:
        spec = get_variant(name)
        try:
            d_layers = sum(spec.trainable_per_layer(n, m, r, k) for n, m in shapes)
        except ValueError as exc:
            raise GenboundError(f"bound_table: variant {name!r}: {exc}.") from None
        d_total = d_layers + int(head_params)
        bound = mi_bound_value(d_total, q, sigma, int(n_train))
        rows.append(
            BoundRow(
                variant=name,
                title=spec.title,
                d_layers=d_layers,
                d_head=int(head_params),
                d_total=d_total,
                bound=bound,
                vacuous=bound > 2.0 * sigma,
                in_paper_table=spec.in_paper_table,
            )
        )
    assumptions = (
        "D per adapted layer from the variant registry (genbound.adapters.registry)",
        "the same head parameters are added to every row",
        "full fine-tuning counts n m per listed layer; other trained tensors only through head_params",
        "the loss is sigma-sub-Gaussian; the MI bound is on the expected gap",
        "I(S; W) <= q D ln 2 nats (W0 and the seed are independent of the data)",
    )
    return BoundTable(
        rows=tuple(rows),
        layer_shapes=shapes,
        r=int(r),
        k=int(k),
        q=float(q),
        sigma=float(sigma),
        n_train=int(n_train),
        head_params=int(head_params),
        assumptions=assumptions,
    )
