"""Benchmark: genbound on a causal language model the size of TinyLlama-1.1B, against a plain
Hugging Face evaluation of the same merged model on the same texts.

The model is generated here, never committed: a LlamaForCausalLM shaped like TinyLlama-1.1B
(vocabulary 32,000, hidden 2,048, MLP 5,632, 22 layers, 32 heads, 4 key-value heads) with
random weights, saved in bfloat16 tensor by tensor in shards (never the whole model in
memory twice), MiniLM's WordPiece tokenizer saved with it (its 30,522 ids fit the
vocabulary), and a PEFT LoRA adapter (r = 16, alpha = 32, on q, k, v and o projections,
CAUSAL_LM) whose B factors get small random values so that dW != 0. The data are tweets
joined until each text has at least L = 256 tokens, cut to L by ``--max-length``: 256
texts, half train and half test.

Runs, each in a process of its own (wall time, CPU time of it and its workers, peak RSS):

- genbound's gap and token-level bound: ``genbound report ADAPTER --base BASE --data
  train.jsonl test.jsonl --max-length 256 --only gap,compression`` (plus ``token_bound``
  where genbound has that part), and ``--only gap`` alone for the comparison with the peer;
- genbound's top Hessian eigenvalue on 32 training texts: ``--only curvature`` with the
  fewest trace products and density steps genbound allows (Hutch++ takes at least 3
  products; SLQ one probe of one step), so Lanczos's top eigenvalue is most of the work;
- the peer: ``AutoModelForCausalLM`` + ``PeftModel.from_pretrained`` +
  ``merge_and_unload``, ``model(input_ids, attention_mask, labels=...)`` per batch of
  8,192 tokens (full logits, the model's own loss), token-weighted mean loss of each
  split, in the same dtype.

It prints genbound / peer ratios of the gap's wall time, CPU time and peak RSS, the
difference between the two train and test losses (expected within 1e-3 relative in
bfloat16), and a markdown table with the goals: the gap and the token-level bound under
5 minutes and 8 GB on 2 cores, the top eigenvalue on 32 texts under 10 minutes. Where the
time goes: the report's own ``timings_s`` per part, and ``--profile``, which runs the gap
and the bound once more in this process under cProfile and prints the functions by
cumulative and by own time.

``--scale small`` (hidden 256, 4 layers, 16 texts of 64 tokens) checks the script in a
minute. The model, adapter and texts go to ``--workdir`` (kept, and reused when complete
and of the same settings), else to a temporary folder.

Run: python bench/bench_lm.py [--scale full|small] [--workdir DIR] [--texts N]
    [--dtype auto|float32|bfloat16|float16] [--curvature-dtype DTYPE] [--device cpu|cuda]
    [--skip gap,curvature,peer] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VOCAB = 32000
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: Standard deviation of the random weights (Llama's initializer_range) and of LoRA's B.
INIT_STD = 0.02
LORA_B_STD = 0.01
#: Bytes per shard of the generated model's weights.
SHARD_BYTES = 512 * 2**20
#: Padded tokens per batch of genbound's causal-LM task (its default); the peer's batches
#: hold as many texts.
BATCH_TOKENS = 8192
GAP_GOAL = (300.0, 8.0)  # seconds, GB
CURVATURE_GOAL = 600.0  # seconds
#: Hutch++ needs 3 products at least; the density one probe of one Lanczos step.
CURVATURE_MINIMA = ("--trace-products", "3", "--density-probes", "1", "--density-steps", "1")


@dataclass(frozen=True)
class Scale:
    """The generated model's shape and the data: ``texts`` texts of ``tokens`` tokens."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    texts: int
    tokens: int
    curvature_examples: int


SCALES = {
    "full": Scale(2048, 5632, 22, 32, 4, texts=256, tokens=256, curvature_examples=32),
    "small": Scale(256, 704, 4, 8, 2, texts=16, tokens=64, curvature_examples=8),
}

GENBOUND = "import sys; from genbound.cli.main import main; sys.exit(main(sys.argv[1:]))"

#: Runs a command and prints its CPU time and the peak RSS of it and its workers: a process
#: of its own, because RUSAGE_CHILDREN's peak covers every child a process ever waited for.
MEASURE = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(r.ru_utime + r.ru_stime, r.ru_maxrss)"
)


def timed(argv: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS GiB) of the command ``argv`` and its workers; exits with
    the command's error output when it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr[-4000:]}")
    out = done.stdout.split()
    return wall, float(out[0]), int(out[1]) / 2**20  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------------------------------
# The model, the adapter and the texts


def llama_config(s: Scale, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )


def write_base(folder: Path, s: Scale, seed: int) -> None:
    """A random LlamaForCausalLM in bfloat16 (matrices N(0, 0.02^2), norms 1) with MiniLM's
    tokenizer, in safetensors shards of about :data:`SHARD_BYTES` with their index: the
    tensors' names and shapes come from a model on the meta device, and one shard at a
    time is in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from genbound.datasets import minilm_path

    folder.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.save_pretrained(folder)
    cfg = llama_config(s, tok)
    cfg.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name in names:
            shape = shapes[name]
            if len(shape) == 2:  # embeddings, projections, the LM head
                t = torch.randn(shape, generator=gen).mul_(INIT_STD).to(torch.bfloat16)
            elif len(shape) == 1:  # RMSNorm weights
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                raise ValueError(f"{name}: unexpected shape {shape}")
            shard[name] = t
            weight_map[name] = file
            total += t.numel() * t.element_size()
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_adapter(folder: Path, base: Path, seed: int) -> None:
    """PEFT LoRA (r = 16, alpha = 32, q/k/v/o, CAUSAL_LM) on ``base``, B ~ N(0, 0.01^2)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # LoRA's A factors draw from the global generator
    model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(LORA_B_STD * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder)


def write_texts(work: Path, base: Path, n: int, length: int) -> None:
    """``train.jsonl`` and ``test.jsonl`` (n // 2 and n - n // 2 texts): consecutive tweets
    joined by spaces until the tokenizer gives at least ``length`` tokens, each text cut
    to exactly ``length`` by ``max_length``."""
    from transformers import AutoTokenizer

    from genbound.datasets import load_tweets

    tok = AutoTokenizer.from_pretrained(base)
    tweets = load_tweets().texts
    texts, i = [], 0
    while len(texts) < n:
        parts = []
        while not parts or len(tok(" ".join(parts))["input_ids"]) < length:
            parts.append(tweets[i % len(tweets)])
            i += 1
        text = " ".join(parts)
        got = len(tok(text, truncation=True, max_length=length)["input_ids"])
        if got != length:
            raise ValueError(f"text {len(texts)}: {got} tokens, expected {length}")
        texts.append(text)
    for name, part in (("train", texts[: n // 2]), ("test", texts[n // 2 :])):
        lines = [json.dumps({"text": t}) for t in part]
        (work / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def spec_of(args) -> dict:
    """What the generated files depend on: reused only when these agree."""
    return {"scale": asdict(SCALES[args.scale]), "texts": args.texts, "seed": args.seed}


def generate(args) -> None:
    work = args.workdir
    for name in ("complete.json", "base", "adapter", "train.jsonl", "test.jsonl"):
        p = work / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    s = SCALES[args.scale]
    write_base(work / "base", s, args.seed)
    write_adapter(work / "adapter", work / "base", args.seed)
    write_texts(work, work / "base", args.texts, s.tokens)
    (work / "complete.json").write_text(json.dumps(spec_of(args), indent=2))


def is_complete(args) -> bool:
    marker = args.workdir / "complete.json"
    return marker.is_file() and json.loads(marker.read_text()) == spec_of(args)


# ---------------------------------------------------------------------------------------
# The peer: a plain Hugging Face evaluation of the merged model


def peer(args) -> None:
    """Token-weighted mean next-token loss of each split by the model's own loss on full
    logits, written to ``peer.json``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work, length = args.workdir, SCALES[args.scale].tokens
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=dtype)
    model = PeftModel.from_pretrained(model, work / "adapter").merge_and_unload()
    model = model.to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(work / "base")
    per_batch = max(1, BATCH_TOKENS // length)
    out = {}
    for split in ("train", "test"):
        lines = (work / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        texts = [json.loads(line)["text"] for line in lines if line.strip()]
        loss_sum, tokens = 0.0, 0
        for i in range(0, len(texts), per_batch):
            enc = tok(
                texts[i : i + per_batch],
                truncation=True,
                max_length=length,
                padding=True,
                return_tensors="pt",
            ).to(args.device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            with torch.inference_mode():
                loss = model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels
                ).loss
            n = int((labels[:, 1:] != -100).sum())
            loss_sum += float(loss.double()) * n
            tokens += n
        out[split] = {"loss": loss_sum / tokens, "n_tokens": tokens, "n": len(texts)}
    (work / "peer.json").write_text(json.dumps(out, indent=2))


# ---------------------------------------------------------------------------------------
# genbound's runs


def gap_parts() -> list[str]:
    from genbound.parts import PARTS

    return ["gap", "compression"] + (["token_bound"] if "token_bound" in PARTS else [])


def report_args(args, out: Path, only: list[str], dtype: str) -> list[str]:
    work = args.workdir
    return [
        "report",
        str(work / "adapter"),
        "--base",
        str(work / "base"),
        "--data",
        str(work / "train.jsonl"),
        str(work / "test.jsonl"),
        "--max-length",
        str(SCALES[args.scale].tokens),
        "--only",
        ",".join(only),
        "--dtype",
        dtype,
        "--device",
        args.device,
        "--out",
        str(out),
        "--force",
    ]


def profile_gap(args, top: int = 30) -> None:
    """genbound's gap and bound run in this process under cProfile: the functions by cumulative
    time, then by their own time."""
    import cProfile
    import pstats

    from genbound.cli.main import main as genbound_main

    prof = cProfile.Profile()
    argv = report_args(args, args.workdir / "runs" / "profile", gap_parts(), args.dtype)
    start = time.perf_counter()
    prof.runcall(genbound_main, argv)
    print(
        f"\n## Profile of the gap and bound run ({time.perf_counter() - start:.1f} s under cProfile)\n"
    )
    prof.dump_stats(str(args.workdir / "runs" / "gap.prof"))
    stats = pstats.Stats(prof, stream=sys.stdout).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top // 2)


def fmt(usage) -> str:
    return f"{usage[0]:8.1f} s wall {usage[1]:8.1f} s CPU {usage[2]:6.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=tuple(SCALES), default="full")
    ap.add_argument("--workdir", type=Path, help="generated files (kept; default: a temp folder)")
    ap.add_argument("--texts", type=int, help="texts, half train (default: the scale's)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--curvature-dtype", help="dtype of the curvature run (default: --dtype)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="runs to skip, of gap (alone),curvature,peer")
    ap.add_argument("--profile", action="store_true", help="profile the gap run in-process")
    ap.add_argument("--internal", choices=("generate", "peer"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.texts is None:
        args.texts = SCALES[args.scale].texts
    if args.texts < 2:
        ap.error("--texts: at least 2 (one train, one test)")
    if set(filter(None, args.skip.split(","))) - {"gap", "curvature", "peer"}:
        ap.error(f"--skip: expected some of gap,curvature,peer; found {args.skip!r}")
    if args.internal == "generate":
        return generate(args)
    if args.internal == "peer":
        return peer(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is None:
            args.workdir = Path(tmp)
        args.workdir = args.workdir.resolve()
        run(args)


def genbound_run(args, name: str, only: list[str], extra=(), dtype=None):
    """(wall s, CPU s, peak RSS GiB) and report.json of ``genbound report --only ONLY``."""
    out = args.workdir / "runs" / name
    cmd = [*report_args(args, out, only, dtype or args.dtype), *extra]
    usage = timed([sys.executable, "-c", GENBOUND, *cmd])
    return usage, json.loads((out / "report.json").read_text())


def run(args) -> None:
    s, work = SCALES[args.scale], args.workdir
    skip = set(filter(None, args.skip.split(",")))
    itself = [sys.executable, __file__, "--workdir", str(work), "--scale", args.scale]
    itself += ["--texts", str(args.texts), "--dtype", args.dtype, "--device", args.device]
    itself += ["--seed", str(args.seed)]
    print(
        f"scale {args.scale}: hidden {s.hidden}, MLP {s.intermediate}, {s.layers} layers, "
        f"{s.heads} heads ({s.kv_heads} key-value), vocabulary {VOCAB:,}; {args.texts} texts "
        f"of {s.tokens} tokens; dtype {args.dtype}; device {args.device}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs; files in {work}",
        flush=True,
    )
    if is_complete(args):
        print("model, adapter and texts: reused", flush=True)
    else:
        print(f"generated model, adapter, texts: {fmt(timed([*itself, '--internal', 'generate']))}")
    full = args.scale == "full"
    rows = []  # (run, usage, goal, met)

    def show(what: str, usage, goal: str = "", ok: bool | None = None) -> None:
        print(f"{what:44s} {fmt(usage)}", flush=True)
        met = "" if ok is None else ("yes" if ok else "NO") if full else "(full scale only)"
        rows.append((what, usage, goal, met))

    parts = gap_parts()
    bound, doc = genbound_run(args, "gap_bound", parts)
    ok = bound[0] < GAP_GOAL[0] and bound[2] * 2**30 < GAP_GOAL[1] * 1e9
    goal = f"< {GAP_GOAL[0] / 60:.0f} min, < {GAP_GOAL[1]:.0f} GB"
    show(f"genbound {'+'.join(parts)}", bound, goal, ok)
    times = ", ".join(f"{k} {v:.2f} s" for k, v in (doc.get("timings_s") or {}).items())
    print(f"  inside the report: {times}; skipped: {doc.get('skipped') or 'none'}")
    token = (doc.get("bounds") or {}).get("token_level") or {}
    b, d = token.get("token_bits") or {}, token.get("doc_bits") or {}
    if "bound" in b and "bound" in d:
        print(
            f"  token-level bound {b['bound']:.4g} bits/token (train {b['train']:.4g}, "
            f"N = {token['n_tokens']:,} tokens); document-level {d['bound']:.4g} "
            f"(N = {token['n_texts']:,} texts)"
        )
    gap = None
    if "gap" not in skip:
        gap, _ = genbound_run(args, "gap", ["gap"])
        show("genbound gap alone", gap)
    if "curvature" not in skip:
        n_curv = min(s.curvature_examples, args.texts // 2)
        extra = ["--curvature-examples", str(n_curv), *CURVATURE_MINIMA]
        dtype = args.curvature_dtype or args.dtype
        curv, cdoc = genbound_run(args, "curvature", ["curvature"], extra, dtype)
        goal = f"< {CURVATURE_GOAL / 60:.0f} min"
        show(f"genbound top eigenvalue, {n_curv} texts", curv, goal, curv[0] < CURVATURE_GOAL)
        c = cdoc["curvature"]
        top, nodes = c["top"], c["density"]["nodes"]
        print(
            f"  ran: Lanczos top eigenvalue {c['top_eigenvalue']:.5g} "
            f"({top.get('iterations')} products, converged {top.get('converged')}), Hutch++ "
            f"{c['trace'].get('num_products')} products, SLQ {len(nodes)} probe(s) x "
            f"{len(nodes[0])} step(s); dtype {dtype}"
        )
    if "peer" not in skip:
        peer_usage = timed([*itself, "--internal", "peer"])
        show("peer: transformers + peft, gap only", peer_usage)
        ours, what = (gap, "gap alone") if gap is not None else (bound, "gap + bound")
        ratio = tuple(a / b for a, b in zip(ours, peer_usage, strict=True))
        print(
            f"  ratio genbound ({what}) / peer: {ratio[0]:.2f}x wall, {ratio[1]:.2f}x CPU, "
            f"{ratio[2]:.2f}x peak RSS"
        )
        rows.append((f"ratio genbound ({what}) / peer", ratio, "", ""))
    summary(rows, doc, None if "peer" in skip else json.loads((work / "peer.json").read_text()))
    if args.profile:
        profile_gap(args)


def summary(rows, doc: dict, ref: dict | None) -> None:
    """The runs with their goals, and genbound's losses against the peer's."""
    print("\n## Summary\n")
    print("| run | wall s | CPU s | peak RSS GiB | goal | met |")
    print("|---|---:|---:|---:|---|---|")
    for what, usage, goal, met in rows:
        cells = (
            [f"{x:.2f}x" for x in usage]
            if what.startswith("ratio")
            else [f"{usage[0]:.1f}", f"{usage[1]:.1f}", f"{usage[2]:.2f}"]
        )
        print(f"| {what} | {' | '.join(cells)} | {goal} | {met} |")
    if ref is None:
        return
    print("\n| split | genbound loss (nats/token) | peer loss | abs diff | rel diff | tokens |")
    print("|---|---:|---:|---:|---:|---|")
    for split in ("train", "test"):
        g = doc["gap"][split]
        ours, theirs = g["loss"], ref[split]["loss"]
        diff = abs(ours - theirs)
        tokens = f"{g.get('n_tokens', g.get('n_weight')):.0f} / {ref[split]['n_tokens']}"
        print(
            f"| {split} | {ours:.6f} | {theirs:.6f} | {diff:.2e} | {diff / abs(theirs):.2e} "
            f"| {tokens} |"
        )
    worst = max(
        abs(doc["gap"][k]["loss"] - ref[k]["loss"]) / abs(ref[k]["loss"]) for k in ("train", "test")
    )
    print(f"\nlosses agree to 1e-3 relative: {'yes' if worst <= 1e-3 else 'NO'} ({worst:.2e})")


if __name__ == "__main__":
    main()
