"""The example notebooks run top to bottom on the fast demo."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_are_generated_from_their_source():
    """The .ipynb files equal what notebooks/make_notebooks.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_notebooks", NOTEBOOKS[0].parent / "make_notebooks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sorted(mod.NOTEBOOKS) == [p.name for p in NOTEBOOKS] and len(NOTEBOOKS) >= 3
    for p in NOTEBOOKS:
        stored = nbformat.read(p, as_version=4)
        assert [c.source for c in stored.cells] == [c.source for c in mod.NOTEBOOKS[p.name]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, fast_demo, tmp_path, monkeypatch):
    out, _ = fast_demo
    monkeypatch.setenv("GENBOUND_DEMO_DIR", str(out))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    assert all(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # every figure cell shows its figure: report code run in the kernel (writing a
    # report's PNGs) must not have switched the kernel's inline backend to Agg
    figure_cells = [c for c in nb.cells if c.cell_type == "code" and _draws(c.source)]
    assert figure_cells
    for c in figure_cells:
        shown = sum("image/png" in o.get("data", {}) for o in c.outputs)
        assert shown >= _draws(c.source), c.source


def _draws(source: str) -> int:
    """How many figures a cell displays (plt.show() and IPython Image calls)."""
    return source.count("plt.show()") + source.count("Image(plot") + source.count("Image(plane")


def test_readme_says_how_to_run_them_and_the_demo_extra_installs_jupyter():
    import tomllib

    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    assert 'pip install -e ".[demo]"' in readme and "jupyter lab notebooks/" in readme
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    demo = set(extras["demo"])
    if "genbound[notebooks]" in demo:
        demo |= set(extras["notebooks"])
    names = {re.split(r"[<>=\[ ]", req)[0] for req in demo}
    assert {"jupyter", "nbclient", "nbformat", "ipykernel"} <= names
