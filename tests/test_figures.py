"""Figures: drawn without touching the session's matplotlib backend, lines told apart by
colour and marker at any count, tick labels that do not overlap, landscapes titled by the
space they move."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from itertools import combinations
from types import SimpleNamespace as NS

import numpy as np
import pytest
from test_landscape import full_objective, lora_objective

from genbound.landscape import landscape_1d
from genbound.plotting import line_styles, palette

MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

#: Calls every figure function genbound has on small made-up results.
DRAW_ALL = textwrap.dedent(
    """
    from types import SimpleNamespace as NS
    from pathlib import Path
    import numpy as np
    from genbound.report.figures import plot_density, plot_intruders, plot_spectra
    from genbound.report.sweep import plot_measures
    from genbound.compare import rank_correlations
    from genbound.figures import plot_bounds_vs_error
    from genbound.landscape import Landscape

    out = Path(OUT)
    intr = NS(k=10, eps=[0.1, 0.5, 0.9], counts=[0, 1, 3])
    layers = [NS(name=f"encoder.layer.{i}.attention.self.query", singular_values=[2.0, 1.0],
                 intruders=intr) for i in range(3)]
    plot_spectra(NS(layers=layers), out / "spectra.png")
    plot_intruders(NS(layers=layers), out / "intruders.png")
    curv = NS(density=NS(grid=np.linspace(0, 1, 50), density=np.ones(50)),
              top=NS(eigenvalues=[0.9]), examples=16)
    plot_density(curv, out / "density.png")
    rows = [{"run": f"r{i}", "mi_bound": 0.1 * (i + 1), "gap_error": 0.01 * (i + 1),
             "compression_bound": 0.9, "test_error": 0.5, "vacuous": []} for i in range(3)]
    corr = rank_correlations(rows, measures=["mi_bound"], n_boot=20)
    plot_measures(rows, corr, out / "sweep.png")
    plot_bounds_vs_error(rows, out / "bars.png")
    xs = np.linspace(-1, 1, 5)
    Landscape(xs, None, xs**2, 0.0, (2.0,), 1.0, 0.01, 0.25, 0.5, "path", "adapter").plot(
        out / "line.png")
    Landscape(xs, xs, xs[:, None]**2 + xs[None]**2, 0.0, (2.0, 2.0), 1.0, 0.01, 0.25, 0.5,
              "random-filter", "adapter").plot(out / "plane.png")
    import matplotlib, sys
    pyplot = "matplotlib.pyplot" in sys.modules  # before get_backend, which may import it
    print(json.dumps({"pyplot": pyplot, "backend": matplotlib.get_backend(),
                      "files": sorted(p.name for p in out.iterdir())}))
    """
)


def _run(prelude: str, tmp_path) -> dict:
    code = f"import json\nOUT = {str(tmp_path)!r}\n{prelude}\n{DRAW_ALL}"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _interactive_backend() -> str:
    try:
        import matplotlib_inline.backend_inline  # noqa: F401

        return "module://matplotlib_inline.backend_inline"
    except ImportError:
        return "svg"


def test_figures_leave_the_session_backend_alone(tmp_path):
    """A notebook's backend (inline, or any non-Agg one) is the same after every figure
    function genbound has ran: library code never calls matplotlib.use."""
    backend = _interactive_backend()
    got = _run(f"import matplotlib\nmatplotlib.use({backend!r})", tmp_path)
    assert got["backend"] == backend
    assert got["files"] == sorted(
        [
            "bars.png",
            "density.png",
            "intruders.png",
            "line.png",
            "plane.png",
            "spectra.png",
            "sweep.png",
        ]
    )


def test_figures_create_no_pyplot_state(tmp_path):
    """Drawn on Figure objects: pyplot is never imported (no global figures left open)."""
    got = _run("", tmp_path / "")
    assert got["pyplot"] is False and len(got["files"]) == 7


@pytest.mark.parametrize("layers", [(4, 5), tuple(range(12))])
def test_line_styles_are_distinct_and_grouped(layers):
    """13 lines (two layers of six modules and a head) and 73 lines: no two lines share a
    (colour, marker, line style); one colour per module type, one marker per layer."""
    names = [f"bert.encoder.layer.{i}.{m}" for i in layers for m in MODULES] + ["classifier"]
    styles = line_styles(names)
    keys = [(tuple(s["color"]), s["marker"], s["linestyle"]) for s in styles]
    assert len(set(keys)) == len(names)
    assert len({s["label"] for s in styles}) == len(names)
    query = [s for n, s in zip(names, styles, strict=True) if n.endswith("self.query")]
    assert len({tuple(s["color"]) for s in query}) == 1
    assert len({s["marker"] for s in query}) == len(layers)
    assert styles[0]["label"] == f"{layers[0]} attention.self.query"


def test_palette_colours_are_distinct_at_any_count():
    for n in (3, 10, 13, 20, 40):
        assert len(set(palette(n))) == n


def _overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible tick labels, on any axis of ``fig``, whose boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [
                (t.get_text(), t.get_window_extent(renderer))
                for t in axis.get_ticklabels()
                if t.get_visible() and t.get_text()
            ]
            bad += [(a, b) for (a, x), (b, y) in combinations(boxes, 2) if x.overlaps(y)]
    return bad


@pytest.fixture
def captured(monkeypatch):
    """The Figure objects genbound saves, instead of files."""
    import genbound.plotting
    import genbound.report.figures

    figures = []

    def keep(fig, path, dpi=110):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        figures.append(fig)
        return path

    monkeypatch.setattr(genbound.plotting, "save_figure", keep)
    monkeypatch.setattr(genbound.report.figures, "save_figure", keep)
    return figures


def test_sweep_axes_spanning_decades_have_readable_ticks(captured, tmp_path):
    """MI and Occam bounds from 9 to 3,000, D from 1,155 to 111,747 and bounds within 1e-5
    of each other: every panel's tick labels are distinct, none overlap, and no offset or
    multiplier text stands beside an axis."""
    from genbound.compare import rank_correlations
    from genbound.report.sweep import plot_measures

    rows = [
        {
            "run": f"run{i}",
            "mi_bound": 8.9 * 3.5**i,
            "occam_bound": 9.0 * 3.5**i,
            "num_trainable": [1155, 8067, 14979, 111747, 60000][i],
            "landscape_ascent": 1e-4 * (1 + i),
            "mean_relative_spectral": 0.99999 + 1e-6 * i,
            "gap_error": 0.05 + 0.02 * i,
            "vacuous": [],
        }
        for i in range(5)
    ]
    measures = [
        "mi_bound",
        "occam_bound",
        "num_trainable",
        "landscape_ascent",
        "mean_relative_spectral",
    ]
    corr = rank_correlations(rows, measures=measures, n_boot=20)
    plot_measures(rows, corr, tmp_path / "sweep.png")
    (fig,) = captured
    assert len(fig.axes) == len(measures)  # one panel per ranked measure, none empty
    assert _overlaps(fig) == []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
            assert len(labels) == len(set(labels)) >= 2
            assert axis.get_offset_text().get_text() == ""


def test_spectra_legend_names_every_line(captured, tmp_path):
    """13 updates: one legend entry per line, each line's own style."""
    from genbound.report.figures import plot_spectra

    layers = [
        NS(name=f"bert.encoder.layer.{i}.{m}", singular_values=np.array([3.0, 2.0, 1.0]))
        for i in (4, 5)
        for m in MODULES
    ] + [NS(name="classifier", singular_values=np.array([0.5, 0.2]))]
    plot_spectra(NS(layers=layers), tmp_path / "s.png")
    (fig,) = captured
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 13
    lines = fig.axes[0].get_lines()
    assert len({(str(ln.get_color()), ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 13
    assert _overlaps(fig) == []


def test_many_updates_get_a_panel_per_module_and_a_colour_bar(captured, tmp_path):
    from genbound.report.figures import plot_spectra

    layers = [
        NS(name=f"bert.encoder.layer.{i}.{m}", singular_values=np.array([3.0, 2.0, 1.0]))
        for i in range(12)
        for m in MODULES
    ]
    plot_spectra(NS(layers=layers), tmp_path / "s.png")
    (fig,) = captured
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == sorted(MODULES)
    assert all(len(ax.get_lines()) == 12 for ax in panels)
    assert any(ax.get_ylabel() == "layer index" for ax in fig.axes)  # the colour bar


def test_landscape_title_names_the_space_it_moves(captured, tmp_path):
    """Full fine-tuning moves its tensors (not an "adapter space"); a LoRA model moves its
    adapter's factors; the 1-D figure's ticks do not overlap."""
    full, *_ = full_objective()
    land = landscape_1d(full, steps=21, seed=0)
    assert land.space == "adapter"  # the objective's trained parameters
    assert land.metadata["moves"] == "the trained tensors, every entry of W0 + dW"
    assert "adapter" not in land.describe()
    lora, *_ = lora_objective()
    assert "adapter's trained factors" in landscape_1d(lora, steps=21).describe()
    land.plot(tmp_path / "l.png")
    (fig,) = captured
    assert "trained tensors" in fig._suptitle.get_text()
    assert _overlaps(fig) == []
