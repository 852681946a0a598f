"""Figures without pyplot, and the styles genbound's figures share.

Every figure genbound draws is a :class:`matplotlib.figure.Figure` saved through the Agg
canvas: library code never selects or switches the backend of a running session, so a
notebook's inline backend (or any other) stays as the user set it, and no pyplot state is
created or left behind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Line styles cycled when colours alone cannot tell the lines apart.
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H", "+")


def new_figure(width: float, height: float):
    """A Figure of ``width`` x ``height`` inches with constrained layout (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` with the Agg canvas to ``path`` (PNG) and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct RGBA colours: a qualitative palette sized to the count (``tab10`` up
    to 10, ``tab20`` up to 20), evenly spaced on ``turbo`` beyond."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        # dark shades first, then the light ones, so neighbours differ in hue
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [colormaps["tab20"](order[i]) for i in range(n)]
    return [colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]


_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_and_module(name: str) -> tuple[str | None, str]:
    """(layer index, module type) of a parameter path: ``encoder.layer.5.attention.self.query``
    -> ``("5", "attention.self.query")``; a name without an index -> ``(None, name)``."""
    hits = list(_INDEX.finditer(name))
    if not hits:
        return None, name
    last = hits[-1]
    rest = name[last.end() :].strip(".")
    return last.group(1), rest or name[: last.start()].rsplit(".", 1)[-1]


def line_styles(names: Sequence[str]) -> list[dict[str, Any]]:
    """Plot keywords (``color``, ``linestyle``, ``marker``, ``label``) for one line per name,
    pairwise distinct.

    Names of a layered model are grouped: one colour per module type (query, key, ...),
    one marker and line style per layer index, labels ``"5 attention.self.query"``. When
    grouping cannot keep the lines apart (two names with the same layer and module, more
    than 10 module types or more layers than :data:`MARKERS`), every line gets its own colour from
    :func:`palette` and its full name as the label.
    """
    parsed = [layer_and_module(n) for n in names]
    modules = list(dict.fromkeys(m for _, m in parsed))
    layers = list(dict.fromkeys(i for i, _ in parsed))
    if len(set(parsed)) == len(parsed) and len(modules) <= 10 and len(layers) <= len(MARKERS):
        colours = palette(len(modules))
        return [
            {
                "color": colours[modules.index(m)],
                "marker": MARKERS[layers.index(i)],
                "linestyle": LINESTYLES[layers.index(i) % len(LINESTYLES)],
                "label": m if i is None else f"{i} {m}",
            }
            for i, m in parsed
        ]
    return [
        {"color": c, "marker": ".", "linestyle": "-", "label": n}
        for c, n in zip(palette(len(names)), names, strict=True)
    ]


def _tick_labels(values: Sequence[float]) -> list[str]:
    """The shortest labels that tell every tick apart, with no multiplier or offset text
    beside the axis: one number of decimals for all (``-0.8 ... 0.8``, ``1.0270 ...
    1.0276``) when the ticks lie between 1e-3 and 1e4 in size, genbound's number format
    otherwise (``4e-5``, ``12,500``)."""
    from genbound.numbers import format_number

    vals = [float(v) for v in values]
    size = max((abs(v) for v in vals), default=0.0)
    if size == 0.0 or 1e-3 <= size < 1e4:
        for decimals in range(9):
            labels = [f"{v:.{decimals}f}" for v in vals]
            exact = all(
                abs(float(t) - v) <= 1e-9 * max(1.0, size)
                for t, v in zip(labels, vals, strict=True)
            )
            if exact and len(set(labels)) == len(labels):
                return [t[1:] if float(t) == 0.0 and t.startswith("-") else t for t in labels]
    for digits in range(2, 9):
        labels = [format_number(v, digits) for v in vals]
        if len(set(labels)) == len(labels):
            break
    return labels


def readable_axis(ax, values: Sequence[float], axis: str = "x", max_ticks: int = 5) -> None:
    """Ticks that do not overlap: a log scale when positive ``values`` span more than 30x
    (major ticks labelled only), else at most ``max_ticks`` linear ticks labelled in full
    (no ``1e-5 + 9.999e-1`` or ``1e-4`` text beside the axis)."""
    from matplotlib.ticker import Formatter, LogLocator, MaxNLocator, NullFormatter

    class _Labels(Formatter):
        def __call__(self, x, pos=None):
            return _tick_labels([x])[0]

        def format_ticks(self, values):
            return _tick_labels(values)

    vals = [float(v) for v in values]
    target = ax.xaxis if axis == "x" else ax.yaxis
    if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target.set_major_locator(LogLocator(base=10, numticks=max_ticks))
        target.set_minor_formatter(NullFormatter())
        return
    target.set_major_locator(MaxNLocator(nbins=max_ticks, min_n_ticks=2))
    target.set_major_formatter(_Labels())
