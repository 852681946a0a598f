"""Benchmark: a 21 x 21 loss landscape on MiniLM + LoRA against loss-landscapes'
``random_plane``, and against the floor of the bare forward passes it must do.

Same model and data as bench/bench_curvature.py (MiniLM-L6 + LoRA r = 8 on query/value of
layers 4-5 + head, 256 sentences, max length 64). genbound evaluates its cached-suffix
objective (layers 4-5 + pooling + head on the hidden states entering layer 4, in
batches of at most 1,024 padded tokens, as reports pack them) with filter-normalised
Gaussian directions in the adapter subspace; the time of caching those hidden states
(layers 0-3, once) is added when comparing with the peer. The floor is steps^2
evaluations of that same objective's mean loss with no perturbation at all (measured in
the same run). loss-landscapes' ``random_plane``
(filter normalisation, ``deepcopy_model=True`` so the user's model is not displaced)
runs on the full model with tokenized inputs, as a user would call it, and again on the
cached-suffix model with one padded batch.

Run: python bench/bench_landscape.py [--n 256] [--steps 21] [--threads 1] [--skip-full]
"""

from __future__ import annotations

import argparse
import time

from bench_curvature import SEQ_LEN, N, build, objectives


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN)
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--skip-full", action="store_true", help="loss-landscapes on the suffix only")
    args = ap.parse_args()

    import torch
    from loss_landscapes.main import random_plane
    from loss_landscapes.metrics import Loss
    from torch import nn

    from genbound.landscape import landscape_2d

    torch.set_num_threads(args.threads)
    full, suffix, data = build(n=args.n, seq_len=args.seq_len)
    suf, _ = objectives(full, suffix, data)
    pts = args.steps**2
    print(
        f"MiniLM-L6 + LoRA; {args.n} examples x {args.seq_len} tokens; {args.steps}x{args.steps} "
        f"grid ({pts} points); {args.threads} threads"
    )

    suf.mean_loss()  # warm-up
    t = time.perf_counter()
    with torch.no_grad():
        suffix.eval()
        for _ in range(pts):
            suf.mean_loss()
    floor = time.perf_counter() - t
    print(f"floor: {pts} bare evaluations of the objective      {floor:8.1f} s")

    t = time.perf_counter()
    land = landscape_2d(suf, steps=args.steps, extent=1.0, seed=0)
    grid = time.perf_counter() - t
    ours = grid + data["cache_seconds"]  # what a user waits for, against the peers
    print(
        f"genbound landscape_2d (adapter space)            {grid:8.1f} s  "
        f"= {grid / floor:.3f} x floor; + caching layers 0-3 {data['cache_seconds']:.1f} s; "
        f"centre {land.centre_loss:.4f}, "
        f"curvature {land.curvature[0]:.3g} / {land.curvature[1]:.3g}, "
        f"flat {land.flat_fraction:.2f}"
    )

    crit = nn.CrossEntropyLoss()
    cases = [("suffix", suffix, {k: data[k] for k in ("hidden", "attention_mask")})]
    if not args.skip_full:
        full_inputs = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
        cases.insert(0, ("full", full, full_inputs))
    for where, model, inputs in cases:
        metric = Loss(crit, inputs, data["labels"])
        model.eval()  # loss-landscapes leaves dropout as it finds it
        torch.manual_seed(0)
        t = time.perf_counter()
        random_plane(
            model, metric, distance=1, steps=args.steps, normalization="filter", deepcopy_model=True
        )
        peer = time.perf_counter() - t
        print(
            f"loss-landscapes random_plane ({where:<6} model)    {peer:8.1f} s  "
            f"genbound (with caching) is {peer / ours:.2f} x faster"
        )


if __name__ == "__main__":
    main()
