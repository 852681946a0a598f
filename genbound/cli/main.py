"""``genbound``: inspect checkpoints, write reports, run the demo.

User errors (bad paths, inconsistent checkpoints) print one paragraph to stderr and
exit with status 2; no traceback is shown for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from genbound.errors import GenboundError


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        type=Path,
        help="checkpoint: PEFT adapter folder, genbound run folder, or fine-tuned model",
    )
    p.add_argument(
        "--base",
        type=Path,
        help="base model folder or tensor file (default: what the checkpoint names)",
    )
    p.add_argument(
        "--adapter", help="PEFT: name of a sub-folder adapter (default: the top-level one)"
    )
    p.add_argument(
        "--n-train",
        type=int,
        help="number of training examples, if the checkpoint does not record it",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "data",
        "the task that runs the checkpoint on data (default: the run folder's recorded task); "
        "without one, only the data-free parts are computed",
    )
    g.add_argument(
        "--data",
        nargs=2,
        type=Path,
        metavar=("TRAIN", "TEST"),
        help="labelled texts (.csv or .jsonl) for a Hugging Face sequence classifier",
    )
    g.add_argument("--text-column", default="text", help="text column of --data (default: text)")
    g.add_argument(
        "--label-column", default="label", help="label column of --data (default: label)"
    )
    g.add_argument("--encoding", default="utf-8", help="encoding of --data (default: utf-8)")
    g.add_argument(
        "--label-names",
        help="comma-separated label names in class-index order (default: sorted labels)",
    )
    g.add_argument("--max-length", type=int, default=64, help="tokens per text (default: 64)")
    g.add_argument(
        "--task",
        metavar="MODULE:FUNCTION",
        help="a function returning a task (see genbound.tasks.protocol)",
    )
    g.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of --task (VALUE parsed as JSON, else a string); repeatable",
    )
    p.add_argument(
        "--mi-loss",
        default="zero_one",
        metavar="LOSS",
        help="loss of the MI bound: zero_one (default), clipped_ce:B (cross-entropy clipped "
        "at B nats) or smoothed_ce:A (predictions smoothed by A)",
    )
    p.add_argument(
        "--curvature-space",
        choices=("merged", "factors", "tensors"),
        default="merged",
        help="what the Hessian is taken with respect to: merged (default; each adapted "
        "layer's dW on the directions its adapter reaches), factors (the adapter's trained "
        "factors) or tensors (every entry of each updated tensor)",
    )
    p.add_argument("--only", help=f"comma-separated parts to compute (of: {', '.join(_parts())})")
    p.add_argument("--skip", help="comma-separated parts not to compute")


def _parts() -> tuple[str, ...]:
    from genbound.report.measures import PARTS

    return PARTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genbound", description="Generalization analysis for fine-tuned models."
    )
    parser.add_argument("--version", action="version", version=f"genbound {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show what genbound understood of a checkpoint")
    _add_load_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("report", help="write a report for a checkpoint")
    _add_load_args(p)
    _add_data_args(p)
    p.add_argument("--out", type=Path, help="report folder (default: <checkpoint>/genbound-report)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the model runs on data: cpu (default), cuda, cuda:N",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="a folder of checkpoints: report on N at a time in separate processes",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "demo", help="train a sweep of adapters of MiniLM on tweets, report on each, compare"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("genbound-demo"),
        help="demo folder (default: ./genbound-demo); runs already there are reused",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fast", action="store_true", help="a tiny sweep (seconds; for tests)")
    size.add_argument("--all", action="store_true", help="every trainable variant")
    p.add_argument("--force", action="store_true", help="retrain and re-report everything")
    p.set_defaults(func=_cmd_demo)
    return parser


def _version() -> str:
    from genbound import __version__

    return __version__


def _load(args: argparse.Namespace):
    from genbound.checkpoint import load_checkpoint

    return load_checkpoint(args.path, base=args.base, adapter=args.adapter, n_train=args.n_train)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from genbound.cli.tables import checkpoint_header, updates_table

    ckpt = _load(args)
    # Piped output keeps whole module names on one line (rich would fold them at 80 columns).
    console = Console(width=None if sys.stdout.isatty() else 240)
    console.print(checkpoint_header(ckpt))
    console.print(updates_table(ckpt))
    return 0


def _task_reference(args: argparse.Namespace) -> tuple[object | None, str]:
    """The task reference the arguments name (None: the checkpoint's own, if any), and
    which argument named it."""
    from genbound.tasks.reference import TaskReference

    if args.data and args.task:
        raise GenboundError("pass either --data or --task, not both.")
    if args.task:
        kwargs = {}
        for item in args.task_arg:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise GenboundError(f"--task-arg: expected KEY=VALUE; found {item!r}.")
            try:
                kwargs[key] = json.loads(value)
            except json.JSONDecodeError:
                kwargs[key] = value
        return TaskReference(args.task, kwargs), "--task"
    if args.task_arg:
        raise GenboundError("--task-arg needs --task.")
    if args.data:
        train, test = (str(Path(x).resolve()) for x in args.data)
        kwargs = {
            "train": train,
            "test": test,
            "text_column": args.text_column,
            "label_column": args.label_column,
            "encoding": args.encoding,
            "max_length": args.max_length,
        }
        if args.label_names:
            kwargs["label_names"] = [x.strip() for x in args.label_names.split(",")]
        return TaskReference("genbound.tasks.hf_text:text_files", kwargs), "--data"
    return None, ""


def _selected_parts(args: argparse.Namespace) -> frozenset[str]:
    from genbound.report.measures import PARTS, check_parts

    def split(text: str | None, flag: str) -> frozenset[str]:
        if text is None:
            return frozenset()
        return check_parts([x.strip() for x in text.split(",") if x.strip()], where=flag)

    only = split(getattr(args, "only", None), "--only") or frozenset(PARTS)
    return only - split(getattr(args, "skip", None), "--skip")


def _mi_loss(text: str) -> dict:
    """``zero_one``, ``clipped_ce:B`` or ``smoothed_ce:A`` as keywords of ``mi_bound``."""
    kind, _, value = text.partition(":")
    try:
        if kind == "zero_one" and not value:
            return {"loss": "zero_one"}
        if kind == "clipped_ce" and value:
            return {"loss": "clipped_ce", "loss_range": float(value)}
        if kind == "smoothed_ce" and value:
            return {"loss": "smoothed_ce", "smoothing": float(value)}
    except ValueError:
        pass
    raise GenboundError(
        f"--mi-loss: expected zero_one, clipped_ce:B or smoothed_ce:A (numbers); found {text!r}."
    )


def _report_options(args: argparse.Namespace) -> dict:
    """The report settings the arguments choose (keywords of ``measure_checkpoint``)."""
    return {
        "parts": sorted(_selected_parts(args)),
        "mi_loss": _mi_loss(args.mi_loss),
        "curvature_space": args.curvature_space,
        "n_train": args.n_train,
        "device": args.device,
    }


def _report_sweep(found: list[Path], args: argparse.Namespace) -> int:
    """Reports for every checkpoint under ``args.path`` (reused by content), then the comparison."""
    from genbound.cli.progress import stage
    from genbound.report.batch import ReportJob, run_report_jobs
    from genbound.report.sweep import write_sweep

    root = args.path
    out = args.out or root / "genbound-report"
    ref, _ = _task_reference(args)
    options = _report_options(args)
    names = [c.relative_to(root).as_posix().replace("/", "__") for c in found]
    jobs = [
        ReportJob(
            str(c),
            str(out / "reports" / name),
            task=ref.to_json() if ref is not None else None,
            options=options,
            base=str(args.base) if args.base else None,
            adapter=args.adapter,
            force=args.force,
        )
        for c, name in zip(found, names, strict=True)
    ]
    import time

    started, done = time.perf_counter(), []

    def on_done(job, computed: bool) -> None:  # one line per checkpoint, with the time left
        done.append(computed)
        spent = time.perf_counter() - started
        left = spent / len(done) * (len(jobs) - len(done))
        what = "reported" if computed else "reused"
        print(
            f"[{len(done)}/{len(jobs)}] {Path(job.checkpoint).name}: {what}; "
            f"{spent:.0f} s so far, about {left:.0f} s left",
            file=sys.stderr,
        )

    results = run_report_jobs(jobs, workers=args.jobs, stage=stage, on_done=on_done)
    docs = {
        name: json.loads((Path(folder) / "report.json").read_text())
        for name, (folder, _) in zip(names, results, strict=True)
    }
    write_sweep(out / "sweep", docs)
    fresh = sum(computed for _, computed in results)
    print(
        f"{len(found)} checkpoints ({fresh} reported now, {len(found) - fresh} reused): "
        f"reports in {out}/reports, comparison in {out}/sweep/sweep.md"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if args.path.is_dir():
        from genbound.report.batch import find_checkpoints

        found = find_checkpoints(args.path)
        if found and found != [args.path]:
            return _report_sweep(found, args)
    from genbound.cli.progress import stage, track
    from genbound.report import ensure_writable
    from genbound.report.batch import ReportJob, run_report_job

    out = args.out or (args.path if args.path.is_dir() else args.path.parent) / "genbound-report"
    ensure_writable(out, force=args.force)  # fail before the work, not after
    ref, _ = _task_reference(args)
    job = ReportJob(
        str(args.path),
        str(out),
        task=ref.to_json() if ref is not None else None,
        options=_report_options(args),
        base=str(args.base) if args.base else None,
        adapter=args.adapter,
        force=True,
    )
    done, _ = run_report_job(job, stage=stage, progress=lambda it, n: track(it, n, "spectra"))
    print(f"report written to {done}/report.md (and report.json)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from genbound.cli.progress import stage
    from genbound.demo import ALL, DEFAULT, FAST
    from genbound.demo.run import run_demo

    config = FAST if args.fast else ALL if args.all else DEFAULT
    start = time.perf_counter()
    result = run_demo(args.out, config, force=args.force, stage=stage)
    print(
        f"{len(result.runs)} runs ({len(result.trained)} trained now) in {args.out}/runs, "
        f"reports in {args.out}/reports, done in {time.perf_counter() - start:.0f} s"
    )
    print(f"sweep comparison: {result.sweep}/sweep.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except GenboundError as exc:
        print(f"genbound: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("genbound: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
