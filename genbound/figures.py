"""Regenerate the README's figures from the demo: ``python -m genbound.figures``.

Runs (or reuses) ``genbound demo`` in ``--demo DIR`` and writes to ``--out`` (default
``figures/``):

* ``sweep_measures_vs_gap.png``: every measure against the measured gap, one point per run;
* ``bounds_vs_test_error.png``: each run's compression and Gaussian PAC-Bayes bounds next
  to its test error;
* ``lora_spectra.png``, ``lora_intruders.png``: a LoRA run's update spectra and intruders
  (the default demo's ``lora_r8_n2000_e8``; the fast demo's ``lora``);
* ``lora_landscape_path.png``: that run's loss along the path from the base model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

#: The LoRA run whose spectra and landscape are shown, by demo (default, fast).
SHOWN = ("lora_r8_n2000_e8", "lora")


def plot_bounds_vs_error(rows: list[dict], path: Path) -> None:
    """Each run's measured test error next to its compression bound and Gaussian PAC-Bayes
    bound (bars; ``rows``: sweep.json's ``certificates``), chance dashed. A subspace run's
    label gives its d."""
    import numpy as np

    from genbound.plotting import new_figure, save_figure

    rows = [r for r in rows if r.get("compression_bound") is not None]
    x = np.arange(len(rows))
    fig = new_figure(max(5.0, 1.0 + 0.9 * len(rows)), 3.8)
    ax = fig.add_subplot()
    bars = (
        ("test_error", "measured test error"),
        ("compression_bound", "compression bound (95%)"),
        ("pacbayes_bound", "Gaussian PAC-Bayes bound"),
    )
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        values = [r.get(key) if r.get(key) is not None else np.nan for r in rows]
        ax.bar(x + (i - 1) * width, values, width, label=label)
    ax.axhline(2 / 3, color="gray", ls="--", lw=0.8, label="chance (3 classes)")
    names = [r["run"] + (f"\nd = {r['subspace_d']:,}" if r.get("subspace_d") else "") for r in rows]
    ax.set_xticks(x, names, rotation=30 if len(rows) > 6 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("0-1 error")
    fig.legend(loc="outside upper center", ncol=4, fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    from genbound.demo import DEFAULT, FAST
    from genbound.demo.run import run_demo
    from genbound.parallel import default_workers
    from genbound.sweep import LocalExecutor

    p = argparse.ArgumentParser(
        prog="python -m genbound.figures", description=__doc__.split("\n")[0]
    )
    p.add_argument("--demo", type=Path, default=Path("genbound-demo"), help="demo folder")
    p.add_argument("--out", type=Path, default=Path("figures"), help="where the figures go")
    p.add_argument("--fast", action="store_true", help="use the fast demo")
    args = p.parse_args(argv)
    executor = LocalExecutor(default_workers())
    result = run_demo(args.demo, FAST if args.fast else DEFAULT, executor=executor)
    args.out.mkdir(parents=True, exist_ok=True)
    if (result.sweep / "figures" / "measures_vs_gap.png").exists():  # none when nothing ranks
        shutil.copy(
            result.sweep / "figures" / "measures_vs_gap.png",
            args.out / "sweep_measures_vs_gap.png",
        )
    certificates = json.loads((result.sweep / "sweep.json").read_text())["certificates"]
    plot_bounds_vs_error(certificates, args.out / "bounds_vs_test_error.png")
    shown = next(name for name in SHOWN if name in result.reports)
    lora = result.reports[shown] / "figures"
    for src, dst in (
        ("spectra.png", "lora_spectra.png"),
        ("intruders.png", "lora_intruders.png"),
        ("landscape-path.png", "lora_landscape_path.png"),
    ):
        if (lora / src).exists():
            shutil.copy(lora / src, args.out / dst)
    print(f"figures written to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
