"""Write the example notebooks (run: python notebooks/make_notebooks.py).

The notebooks are generated from this file so that their code stays reviewable as plain
Python; the test suite executes every notebook top to bottom on the fast demo and checks
that every figure cell displays its figure. Open them with
``pip install -e ".[demo]" && genbound demo --fast && jupyter lab notebooks/``.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = """\
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from genbound.demo import FAST
from genbound.demo.run import run_demo

# The fast demo (seconds); runs and reports already in the folder are reused.
# Set GENBOUND_DEMO_DIR to a folder made by `genbound demo` to explore the full sweep.
demo = Path(os.environ.get("GENBOUND_DEMO_DIR", "genbound-demo-fast"))
if not (demo / "sweep" / "sweep.json").exists():
    run_demo(demo, FAST)
runs = sorted(p.name for p in (demo / "runs").iterdir())
runs"""

NOTEBOOKS = {
    "01_spectra.ipynb": [
        new_markdown_cell(
            "# Weight-update spectra and intruder dimensions\n\n"
            "Load a trained checkpoint, look at the singular spectrum of each update dW, check "
            "it against a dense SVD of the merged weight, and count intruder dimensions."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "import genbound\n"
            "import numpy as np\n"
            "import torch\n"
            "from genbound.spectra import analyze_spectra\n\n"
            "ckpt = genbound.load_checkpoint(demo / 'runs' / 'lora')\n"
            "res = analyze_spectra(ckpt, k=10)\n"
            "for x in res.layers:  # a new head has no W0, so no intruders\n"
            "    intr = x.intruders.count_at(0.5) if x.intruders is not None else 'n/a'\n"
            "    print(f'{x.name:45s} {x.kind:8s} ||dW||_2={x.spectral_norm:.4f} '\n"
            "          f'eff.rank={x.effective_rank:.2f} intruders@0.5={intr}')"
        ),
        new_code_cell(
            "# the factor-space singular values equal numpy's SVD of the dense update\n"
            "name = res.layers[0].name\n"
            "dense = np.linalg.svd(ckpt.updates[name].delta(torch.float64).numpy(), compute_uv=False)\n"
            "ours = np.asarray(res.layer(name).singular_values)\n"
            "assert np.allclose(ours, dense[: ours.size], rtol=1e-8, atol=1e-12)\n"
            "ours[:5], dense[:5]"
        ),
        new_code_cell(
            "# the report's own figures, written as `genbound report` writes them (this leaves\n"
            "# the notebook's plotting backend as it is: the next cell still shows its plot)\n"
            "import tempfile\n\n"
            "from IPython.display import Image, display\n"
            "from genbound.report.figures import plot_intruders, plot_spectra\n\n"
            "figures = Path(tempfile.mkdtemp())\n"
            "display(Image(plot_spectra(res, figures / 'spectra.png')))\n"
            "display(Image(plot_intruders(res, figures / 'intruders.png')))"
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))\n"
            "for x in res.layers:\n"
            "    sv = np.asarray(x.singular_values)\n"
            "    a.semilogy(np.arange(1, sv.size + 1), sv, marker='.', label=x.name.split('encoder.')[-1])\n"
            "    if x.intruders is not None:\n"
            "        b.plot(x.intruders.eps, x.intruders.counts, marker='.')\n"
            "a.set(xlabel='i', ylabel='sigma_i(dW)', title='singular spectra')\n"
            "b.set(xlabel='eps', ylabel='intruders in top 10', title='intruder dimensions')\n"
            "a.legend(fontsize=6)\n"
            "plt.show()"
        ),
    ],
    "02_bounds_vs_gap.ipynb": [
        new_markdown_cell(
            "# Which measure tracks the gap?\n\n"
            "Every run of the sweep has a report; the sweep comparison ranks each measure "
            "against the measured generalization gap with Kendall's tau."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "import json\n\n"
            "from genbound.numbers import format_number  # never rounds 0.9999999978 to 1\n\n"
            "sweep = json.loads((demo / 'sweep' / 'sweep.json').read_text())\n"
            "cols = ['run', 'num_trainable', 'train_error', 'test_error', 'gap_error', "
            "'compression_bound', 'mi_bound']\n"
            "print(' | '.join(cols))\n"
            "for r in sweep['rows']:\n"
            "    print(' | '.join(format_number(r[c]) for c in cols))"
        ),
        new_code_cell(
            "# informative measures by rank (highest tau first), then the ones not ranked\n"
            "ranked = sorted((c for c in sweep['correlations'] if c['informative']), "
            "key=lambda c: c['rank'])\n"
            "for c in ranked:\n"
            "    print(f\"#{c['rank']:<2} {c['measure']:24s} tau={c['tau']:+.3f}  \"\n"
            "          f\"[{c['low']:+.2f}, {c['high']:+.2f}]  n={c['n']}\")\n"
            "for c in sweep['correlations']:\n"
            "    if not c['informative']:\n"
            "        print(f\"    {c['measure']:24s} not ranked: {c['why_uninformative']}\")"
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "rows = sweep['rows']\n"
            "fig, ax = plt.subplots(figsize=(6, 4))\n"
            "for r in rows:\n"
            "    ax.scatter(r['test_error'], r['compression_bound'])\n"
            "    ax.annotate(r['run'], (r['test_error'], r['compression_bound']), fontsize=8)\n"
            "ax.axline((0, 0), slope=1, color='gray', lw=0.8)\n"
            "ax.set(xlabel='measured test error', ylabel='compression bound (95%)')\n"
            "plt.show()"
        ),
    ],
    "03_landscape.ipynb": [
        new_markdown_cell(
            "# Loss landscapes around a checkpoint\n\n"
            "Rebuild the fine-tuned model from a run (its task is recorded in the run folder), "
            "then slice the training loss along the path from the base model and along random "
            "filter-normalized directions in the space of the trained tensors (for LoRA, its "
            "factors B and A)."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "import genbound\n"
            "from genbound.landscape import landscape_1d, landscape_2d\n"
            "from genbound.report.measures import base_values\n"
            "from genbound.tasks.reference import TaskReference, load_task\n"
            "from genbound.tasks.sampling import sample_objective\n\n"
            "ckpt = genbound.load_checkpoint(demo / 'runs' / 'lora')\n"
            "task = load_task(TaskReference.from_json(ckpt.data))\n"
            "train, test = task.objectives(ckpt)\n"
            "sub, sample = sample_objective(train, 64, seed=0)\n"
            "sub.description"
        ),
        new_code_cell(
            "path = landscape_1d(sub, kind='path', base=base_values(ckpt, sub), steps=9)\n"
            "# x = -1 is the base model, x = 0 the checkpoint\n"
            "list(zip(path.xs.round(2), path.losses.round(4)))"
        ),
        new_code_cell(
            "plane = landscape_2d(sub, kind='random', steps=7, seed=0)\n"
            "print('centre loss', plane.centre_loss, 'curvature per axis', plane.curvature)\n"
            "from IPython.display import Image\n\n"
            "Image(plane.plot('landscape-2d.png'))"
        ),
    ],
}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
