"""How many examples and Hessian-vector products the Hessian trace needs: the measurement
behind the report's defaults (``curvature_examples``, ``trace_products``).

On a demo checkpoint (default: the default demo's ``lora_r8_n2000_e8``, trained here into a
temporary folder, about 15 s), for each sample size n and product budget p, the Hutch++
trace of the merged-space Hessian on ``seeds`` different stratified samples of n training
examples. Printed per (n, p): the mean trace, Hutch++'s own relative standard error
(probe noise, mean over samples), the spread of the trace between samples (sample noise,
relative standard deviation), their combination, the seconds per trace, and whether the
combined relative error is below 1/3 (the report's ``reliable`` criterion).

Run: python bench/curvature_budget.py [RUN_FOLDER] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SIZES = (32, 64, 128, 256)
PRODUCTS = (6, 10, 20, 30)


def demo_run(folder: str) -> str:
    from genbound.demo.sweep import DEFAULT, TrainJob, train_variant

    spec = next(s for s in DEFAULT.variants if s.name == "lora_r8_n2000_e8")
    return str(train_variant(TrainJob(spec, DEFAULT, os.path.join(folder, spec.name))))


def main() -> None:
    import numpy as np
    import torch

    from genbound.checkpoint import load_checkpoint
    from genbound.curvature.algorithms import hutchpp
    from genbound.curvature.api import hessian_operator
    from genbound.measures.context import MeasureContext
    from genbound.options import ReportOptions
    from genbound.tasks.reference import TaskReference, load_task

    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.run or demo_run(tmp)
        ckpt = load_checkpoint(path)
        task = load_task(TaskReference.from_json(ckpt.data))
        print(f"checkpoint {path}: {ckpt.variant}, N = {ckpt.n_train}")
        print("  n    p   trace     probe_rse  sample_rsd  combined  s/trace  < 1/3")
        for n in SIZES:
            rows: dict[int, list[tuple[float, float, float]]] = {p: [] for p in PRODUCTS}
            for seed in range(args.seeds):
                ctx = MeasureContext(ckpt, task, ReportOptions(curvature_examples=n, seed=seed))
                objective = ctx.adapted()
                with hessian_operator(objective, parameterization="merged") as op:
                    for p in PRODUCTS:
                        start = time.perf_counter()
                        t = hutchpp(op, p, seed=seed)
                        rows[p].append((t.trace, t.stderr, time.perf_counter() - start))
            for p, got in rows.items():
                traces = np.array([g[0] for g in got])
                probe = float(np.mean([g[1] / abs(g[0]) for g in got]))
                sample = float(traces.std(ddof=1) / abs(traces.mean())) if len(got) > 1 else 0.0
                combined = math.hypot(probe, sample)
                secs = float(np.mean([g[2] for g in got]))
                ok = "yes" if combined < 1 / 3 else "no"
                print(
                    f"{n:4d} {p:4d} {traces.mean():9.4g} {probe:10.3f} {sample:11.3f} "
                    f"{combined:9.3f} {secs:8.2f}  {ok}"
                )


if __name__ == "__main__":
    main()
