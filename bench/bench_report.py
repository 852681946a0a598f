"""Benchmark: a default ``genbound report`` with data of a MiniLM LoRA checkpoint (2,000
training texts, 1,000 test texts), and a sweep of six such reports, against the same
commands with the last encoder layer run for every token (the path before the first-token
last layer, :mod:`genbound.tasks.first_token`).

Goals: one report under 2 minutes and 2 GB peak RSS on 2 cores; the six-checkpoint sweep
under 10 minutes. Each command runs in its own process; wall time, CPU time (user + system
of the command and its workers) and peak RSS (the largest of them) are printed with the
ratio baseline / genbound.

The checkpoints are the default demo's runs at n = 2,000 (``lora_r8_n2000_e8`` for the single
report; the six lora and cla runs at n = 2,000 ... for the sweep), trained into a temporary
folder first (about 1 min) unless ``--runs FOLDER`` names a demo's ``runs/`` folder.

Run: python bench/bench_report.py [--runs FOLDER] [--skip-baseline-sweep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SINGLE = "lora_r8_n2000_e8"
SWEEP = (
    "lora_r2_n2000_e1",
    "lora_r8_n2000_e1",
    "lora_r8_n2000_e8",
    "cla_r2_n2000_e8",
    "cla_r8_n2000_e1",
    "cla_r8_n2000_e8",
)
#: Runs the CLI with the last layer computed for every token.
BASELINE = (
    "import sys; import genbound.tasks.hf_text as h; "
    "h.EncoderSuffix.__init__.__kwdefaults__['first_token'] = False; "
    "from genbound.cli.main import main; sys.exit(main(sys.argv[1:]))"
)
GENBOUND = "import sys; from genbound.cli.main import main; sys.exit(main(sys.argv[1:]))"


def train(folder: Path, names: tuple[str, ...]) -> None:
    from genbound.demo.sweep import DEFAULT, TrainJob, train_variant

    for spec in DEFAULT.variants:
        if spec.name in names:
            train_variant(TrainJob(spec, DEFAULT, str(folder / spec.name)))


#: Runs a command and prints its CPU time and the peak RSS of it and its workers: a process
#: of its own, because RUSAGE_CHILDREN's peak covers every child a process ever waited for.
MEASURE = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(r.ru_utime + r.ru_stime, r.ru_maxrss)"
)


def timed(code: str, args: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS GiB) of ``python -c code args`` and its workers."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    wall = time.perf_counter() - start
    return wall, float(out[0]), int(out[1]) / 2**20  # ru_maxrss is in KiB on Linux


def row(what: str, ours, base) -> None:
    print(
        f"{what:34s} genbound {ours[0]:7.1f} s wall {ours[1]:7.1f} s CPU {ours[2]:5.2f} GiB | "
        + (
            f"baseline {base[0]:7.1f} s wall {base[1]:7.1f} s CPU {base[2]:5.2f} GiB | "
            f"ratio {base[0] / ours[0]:.2f}x wall, {base[1] / ours[1]:.2f}x CPU"
            if base is not None
            else "baseline skipped"
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path)
    ap.add_argument("--skip-baseline-sweep", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = args.runs
        if runs is None:
            runs = tmp / "runs"
            train(runs, (SINGLE, *SWEEP))
        single = ["report", str(runs / SINGLE), "--force", "--out"]
        base = timed(BASELINE, [*single, str(tmp / "base")])
        ours = timed(GENBOUND, [*single, str(tmp / "ours")])
        row("one report (default options)", ours, base)
        sweep = tmp / "sweep"
        sweep.mkdir()
        for name in SWEEP:
            shutil.copytree(runs / name, sweep / name)
        cmd = ["report", str(sweep), "--jobs", "2", "--force", "--out"]
        base = None if args.skip_baseline_sweep else timed(BASELINE, [*cmd, str(tmp / "bs")])
        ours = timed(GENBOUND, [*cmd, str(tmp / "os")])
        row(f"sweep of {len(SWEEP)} reports, 2 workers", ours, base)


if __name__ == "__main__":
    main()
