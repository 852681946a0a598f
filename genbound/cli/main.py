"""``genbound``: inspect checkpoints, write reports, run the demo.

User errors (bad paths, inconsistent checkpoints, bad options) print one paragraph to
stderr and exit with status 2. Any other failure prints a short "internal error"
paragraph naming a log file that holds the traceback, and exits with status 1. No
traceback is ever shown. Arguments are parsed before torch is imported, so ``--help``,
``--version`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from genbound.errors import GenboundError
from genbound.options import MEASURE_SPEC, ReportOptions
from genbound.parts import PARTS, check_parts


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
        type=_positive_int,
        help="number of training examples, if the checkpoint does not record it",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="let the checkpoint name Python code to run: a task or base-model function that "
        "is not genbound's own (off by default: a checkpoint from someone else never runs "
        "code it names)",
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
        help="texts (.csv or .jsonl; .txt for a causal LM's whole texts): labelled for a "
        "sequence classifier, plain or prompt/response pairs for a causal language model",
    )
    g.add_argument(
        "--objective",
        choices=("auto", "causal_lm", "sequence_classification"),
        default="auto",
        help="what the checkpoint predicts (default auto: its PEFT task_type, else its base "
        "model's architectures, else sequence_classification)",
    )
    g.add_argument(
        "--prompt-column",
        help="a causal LM's prompt column of --data (context only: the loss is on the response)",
    )
    g.add_argument("--response-column", help="a causal LM's response column of --data")
    g.add_argument(
        "--chat-template",
        action="store_true",
        help="format prompt/response pairs with the tokenizer's chat template (a user and an "
        "assistant turn) before tokenizing, as TRL's SFTTrainer does",
    )
    g.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="a causal LM's floating-point type (default auto: as saved; float32 for "
        "precise curvature of a bfloat16 model)",
    )
    g.add_argument("--text-column", default="text", help="text column of --data (default: text)")
    g.add_argument(
        "--label-column", default="label", help="label column of --data (default: label)"
    )
    g.add_argument("--encoding", default="utf-8", help="encoding of --data (default: utf-8)")
    g.add_argument(
        "--label-names",
        help="comma-separated label names in class-index order (default: integer labels are class indices, other labels sorted)",
    )
    g.add_argument(
        "--max-length",
        type=_positive_int,
        default=None,
        help="tokens per text, longer texts are cut (default: 64 for a classifier; for a causal "
        "LM the tokenizer's and model's limit, at most 1,024)",
    )
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
        default=None,
        metavar="LOSS",
        help="loss of the MI bound: zero_one, clipped_ce:B (cross-entropy clipped at B nats) "
        "or smoothed_ce:A (predictions smoothed by A); default: the error the task's metric "
        "declares (zero_one for classification and without data)",
    )
    p.add_argument(
        "--curvature-space",
        choices=("merged", "factors", "tensors"),
        default="merged",
        help="what the Hessian is taken with respect to: merged (default; each adapted "
        "layer's dW on the directions its adapter reaches), factors (the adapter's trained "
        "factors) or tensors (every entry of each updated tensor)",
    )
    p.add_argument("--only", help=f"comma-separated parts to compute (of: {', '.join(PARTS)})")
    p.add_argument("--skip", help="comma-separated parts not to compute")
    p.add_argument(
        "--measure",
        action="append",
        default=[],
        type=_measure_spec,
        metavar="MODULE:ATTR",
        help="a measure of your own to add to the report (a function of the checkpoint, or of "
        "the checkpoint and the task); repeatable; imported where the report is computed, "
        "whatever --only and --skip say",
    )
    c = p.add_argument_group(
        "curvature and landscapes",
        "their cost grows with the examples times the products or points",
    )
    c.add_argument(
        "--curvature-examples",
        type=_positive_int,
        default=256,
        metavar="N",
        help="training examples the Hessian and the landscapes average over: a seeded sample "
        "stratified by label (default: 256)",
    )
    c.add_argument(
        "--trace-products",
        type=_positive_int,
        default=ReportOptions().trace_products,
        metavar="N",
        help="Hessian-vector products of the Hutch++ trace (default: "
        f"{ReportOptions().trace_products})",
    )
    c.add_argument(
        "--density-probes",
        type=_positive_int,
        default=2,
        metavar="N",
        help="random probes of the Hessian spectral density (default: 2)",
    )
    c.add_argument(
        "--density-steps",
        type=_positive_int,
        default=20,
        metavar="N",
        help="Lanczos steps per density probe (default: 20)",
    )
    c.add_argument(
        "--landscape-steps",
        type=_landscape_steps,
        default=21,
        metavar="N",
        help="points of each 1-D landscape slice, 4 k + 1 (default: 21)",
    )
    c.add_argument(
        "--pacbayes-samples",
        type=_positive_int,
        default=100,
        metavar="M",
        help="models drawn for the Gaussian PAC-Bayes certificate, each evaluated on about "
        "N / M training examples (default: 100)",
    )
    f = p.add_argument_group(
        "flatness and sharpness",
        "bisection searches for the noise scale (or adversarial radius) at which the train "
        "error rises by 0.1; their cost is the examples times the draws times the steps",
    )
    for flag, field, what in (
        ("--sharpness-examples", "sharpness_examples", "training examples of the searches"),
        ("--sharpness-samples", "sharpness_samples", "noise draws per step (Gaussian)"),
        ("--sharpness-starts", "sharpness_starts", "random starts per step (adversarial)"),
        ("--sharpness-depth", "sharpness_depth", "bisection steps of each search, at most"),
        (
            "--sharpness-ascent-steps",
            "sharpness_ascent_steps",
            "projected-gradient steps per adversarial start",
        ),
    ):
        default = getattr(ReportOptions(), field)
        f.add_argument(
            flag,
            type=_positive_int,
            default=default,
            metavar="N",
            help=f"{what} (default: {default})",
        )
    f.add_argument(
        "--sharpness-spaces",
        type=_sharpness_spaces,
        default=ReportOptions().sharpness_spaces,
        metavar="SPACES",
        help="comma-separated spaces the searches perturb: merged (every entry of W0 + dW) "
        "and trained (the adapter's own tensors) (default: merged,trained)",
    )
    c.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=0,
        help="seed of the example sample, Lanczos, Hutch++, the random direction and the "
        "flatness searches' draws (default: 0)",
    )


def _sharpness_spaces(text: str) -> tuple[str, ...]:
    from genbound.options import SHARPNESS_SPACES

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names or any(x not in SHARPNESS_SPACES for x in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names of {', '.join(SHARPNESS_SPACES)}, comma-separated; "
            f"found {text!r}"
        )
    return names


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}; found {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _integer(text, 0, "a non-negative integer")


def _landscape_steps(text: str) -> int:
    value = _positive_int(text)
    if value < 5 or (value - 1) % 4:
        raise argparse.ArgumentTypeError(
            f"expected 4 k + 1 points (5, 9, ..., 21, ...) so the path slice hits the base model "
            f"and the checkpoint; found {value}"
        )
    return value


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def _measure_spec(text: str) -> str:
    if not MEASURE_SPEC.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected MODULE:ATTR (e.g. mypkg.measures:weight_norm); found {text!r}"
        )
    return text


def _minutes(text: str) -> int:
    return _integer(text, 1, "a whole number of minutes >= 1")


def _positive(unit: str):
    """An argument type: a finite number of ``unit`` above 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number of {unit} above 0; found {text!r}")
        return value

    return parse


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps; found {text!r}")
    return text


class _Parser(argparse.ArgumentParser):
    """Argument errors as one paragraph, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"genbound: error: {self.prog}: {message}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genbound", description="Generalization analysis for fine-tuned models.")
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
        type=_device,
        default="cpu",
        help="where the model runs on data: cpu (default), cuda, cuda:N or mps",
    )
    _add_executor_args(p)
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
    size.add_argument(
        "--study",
        action="store_true",
        help="a larger grid (51 runs: four variants x two ranks x three training-set sizes x "
        "two epoch counts, and three subspace runs) for a confident answer",
    )
    size.add_argument("--all", action="store_true", help="every trainable variant, one run each")
    p.add_argument("--force", action="store_true", help="retrain and re-report everything")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="reports computed N at a time, each on one thread (default: one per CPU core)",
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "where the reports are computed",
        "every report of a folder of checkpoints runs on one thread, so the numbers are the "
        "same whichever executor runs them (see docs/sweeps.md)",
    )
    g.add_argument(
        "--executor",
        choices=("local", "dask", "slurm"),
        default="local",
        help="local (default): this machine; dask: an existing Dask cluster (--scheduler); "
        "slurm: SLURM jobs through submitit",
    )
    g.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="local: report on N checkpoints at a time in separate processes; slurm: split "
        "the checkpoints into at least N jobs when they allow (default: 1, one job per base "
        "model)",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask: the scheduler's address, e.g. tcp://10.0.0.5:8786",
    )
    g.add_argument(
        "--scheduler-timeout",
        type=_positive("seconds"),
        metavar="SECONDS",
        help="dask: how long to wait for the scheduler and a first worker (default: 10)",
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="slurm: the partition")
    g.add_argument(
        "--slurm-time",
        type=_minutes,
        metavar="MINUTES",
        help="slurm: time limit of each job (default: 60)",
    )
    g.add_argument(
        "--slurm-mem",
        type=_positive("GB"),
        metavar="GB",
        help="slurm: memory of each job (default: the partition's)",
    )
    g.add_argument(
        "--slurm-gpus",
        type=_nonnegative_int,
        metavar="N",
        help="slurm: GPUs of each job (default: 0; pair with --device cuda)",
    )
    g.add_argument(
        "--slurm-logs",
        type=Path,
        metavar="FOLDER",
        help="slurm: where submitit keeps the jobs' scripts and logs, on a filesystem the "
        "nodes share (default: OUT/slurm for a folder of checkpoints, OUT-slurm for one)",
    )
    g.add_argument(
        "--slurm-local",
        action="store_true",
        help="slurm: run the jobs as processes of this machine through submitit's local "
        "executor (to try a SLURM setup without a cluster)",
    )


def _version() -> str:
    from genbound import __version__

    return __version__


def _load(args: argparse.Namespace):
    from genbound.checkpoint import load_checkpoint

    return load_checkpoint(
        args.path,
        base=args.base,
        adapter=args.adapter,
        n_train=args.n_train,
        trust_code=args.trust_code,
    )


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
            "objective": args.objective,
        }
        if args.dtype != "auto":
            kwargs["dtype"] = args.dtype
        if args.chat_template:
            kwargs["chat_template"] = True
        if args.max_length is not None:
            kwargs["max_length"] = args.max_length
        if args.prompt_column is not None or args.response_column is not None:
            kwargs["prompt_column"] = args.prompt_column
            kwargs["response_column"] = args.response_column
        if args.label_names:
            kwargs["label_names"] = [x.strip() for x in args.label_names.split(",")]
        return TaskReference("genbound.tasks.text_data:text_data", kwargs), "--data"
    return None, ""


def _selected_parts(args: argparse.Namespace) -> frozenset[str]:
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


def _report_options(args: argparse.Namespace):
    """The report settings the arguments choose."""
    return ReportOptions(
        parts=tuple(_selected_parts(args)),
        mi_loss=_mi_loss(args.mi_loss) if args.mi_loss is not None else None,
        curvature_space=args.curvature_space,
        curvature_examples=args.curvature_examples,
        trace_products=args.trace_products,
        density_probes=args.density_probes,
        density_steps=args.density_steps,
        landscape_steps=args.landscape_steps,
        pacbayes_samples=args.pacbayes_samples,
        sharpness_examples=args.sharpness_examples,
        sharpness_samples=args.sharpness_samples,
        sharpness_starts=args.sharpness_starts,
        sharpness_depth=args.sharpness_depth,
        sharpness_ascent_steps=args.sharpness_ascent_steps,
        sharpness_spaces=args.sharpness_spaces,
        seed=args.seed,
        n_train=args.n_train,
        device=args.device,
        measures=tuple(args.measure),
    )


def _check_report_inputs(args: argparse.Namespace) -> None:
    """What else about the command line can be checked before any work: the cache folder
    and the device of this machine (the output folder is checked by the caller; workers
    of a cluster check their own)."""
    if args.executor != "local":
        return
    from genbound.cache import cache_root
    from genbound.report.writer import check_output_folder

    check_output_folder(
        cache_root(),
        what="cache folder (set by GENBOUND_CACHE or XDG_CACHE_HOME)",
        replaced=False,
    )
    if args.device != "cpu":
        from genbound.report.batch import check_device

        check_device(args.device)


#: Options that belong to one executor only.
_EXECUTOR_FLAGS = {
    "dask": ("scheduler", "scheduler_timeout"),
    "slurm": (
        "slurm_partition",
        "slurm_time",
        "slurm_mem",
        "slurm_gpus",
        "slurm_logs",
        "slurm_local",
    ),
}


def _executor(args: argparse.Namespace, logs: Path):
    """The executor the arguments choose (``logs``: submitit's folder unless --slurm-logs);
    a GenboundError for options of another executor and for a missing --scheduler."""
    for kind, flags in _EXECUTOR_FLAGS.items():
        for flag in flags:
            if kind != args.executor and getattr(args, flag) not in (None, False):
                option = "--" + flag.replace("_", "-")
                raise GenboundError(
                    f"{option}: expected --executor {kind} with it; found --executor "
                    f"{args.executor}."
                )
    from genbound.sweep.executors import DaskExecutor, LocalExecutor, SlurmExecutor

    if args.executor == "dask":
        if not args.scheduler:
            raise GenboundError(
                "--executor dask: expected --scheduler ADDRESS (e.g. tcp://10.0.0.5:8786), the "
                "address of a running Dask scheduler; found none."
            )
        return DaskExecutor(args.scheduler, timeout=args.scheduler_timeout or 10.0)
    if args.executor == "slurm":
        return SlurmExecutor(
            str(args.slurm_logs or logs),
            partition=args.slurm_partition,
            time_min=args.slurm_time or 60,
            mem_gb=args.slurm_mem,
            gpus=args.slurm_gpus or 0,
            jobs=args.jobs,
            cluster="local" if args.slurm_local else "slurm",
        )
    return LocalExecutor(args.jobs)


def _job(args: argparse.Namespace, checkpoint: Path, out: Path, name: str = "", **kw):
    from genbound.report.batch import ReportJob

    return ReportJob(str(checkpoint), str(out), name=name, **_job_fields(args), **kw)


def _job_fields(args: argparse.Namespace) -> dict:
    """The fields every report job of the command shares."""
    ref, _ = _task_reference(args)
    return {
        "task": ref.to_json() if ref is not None else None,
        "options": _report_options(args),
        "base": str(args.base) if args.base else None,
        "adapter": args.adapter,
        "trust_code": args.trust_code,
    }


def _report_sweep(found: list[Path], args: argparse.Namespace) -> int:
    """Reports for every checkpoint under ``args.path`` (reused by content), then the comparison."""
    import time

    from genbound.cli.progress import make_stage, report_stage_names
    from genbound.report.writer import check_output_folder
    from genbound.sweep import run_sweep, sweep_jobs

    root = args.path
    out = args.out or root / "genbound-report"
    check_output_folder(out, what="report folder")
    _check_report_inputs(args)
    jobs = sweep_jobs(
        {c.relative_to(root).as_posix(): c for c in found},
        out,
        force=args.force,
        **_job_fields(args),
    )
    executor = _executor(args, out / "slurm")
    started, done = time.perf_counter(), []

    def on_done(outcome) -> None:  # one line per checkpoint, with the time left
        done.append(outcome)
        spent = time.perf_counter() - started
        left = spent / len(done) * (len(jobs) - len(done))
        what = "reported" if outcome.computed else "reused" if outcome.ok else "FAILED"
        print(
            f"[{len(done)}/{len(jobs)}] {outcome.name}: {what}; "
            f"{spent:.0f} s so far, about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    stage = make_stage(report_stage_names(jobs[0].options))
    result = run_sweep(jobs, out / "sweep", executor=executor, stage=stage, on_done=on_done)
    ok = [o for o in result.outcomes if o.ok]
    fresh = sum(o.computed for o in ok)
    count = f"{len(ok)} of {len(found)}" if result.failed else f"{len(found)}"
    print(
        f"{count} checkpoints ({fresh} reported now, {len(ok) - fresh} reused): "
        f"reports in {out}/reports"
        + (f", comparison in {result.sweep}/sweep.md" if result.sweep else "")
    )
    return _report_failures(result.failed)


def _report_failures(failed) -> int:
    """Print each failed checkpoint's error (logging internal ones); the exit status."""
    if not failed:
        return 0
    lines = [f"{len(failed)} checkpoint(s) could not be reported:"]
    internal = False
    for o in failed:
        msg = o.error
        if o.internal:
            internal = True
            msg += f"; details in {_write_log(o.details or o.error)}"
        lines.append(f"  {o.name}: {msg}")
    print("genbound: error: " + "\n".join(lines), file=sys.stderr)
    return 1 if internal else 2


def _cmd_report(args: argparse.Namespace) -> int:
    if not args.path.exists():
        from genbound.errors import input_error

        raise input_error(
            args.path,
            "checkpoint not found",
            expected="a checkpoint folder or file, or a folder of checkpoints",
            found="no such path",
        )
    if args.path.is_dir():
        from genbound.report.batch import find_checkpoints

        found = find_checkpoints(args.path)
        if found and found != [args.path]:
            return _report_sweep(found, args)
    from genbound.cli.progress import make_stage, report_stage_names, track
    from genbound.report import ensure_writable
    from genbound.report.batch import run_report_job

    out = args.out or (args.path if args.path.is_dir() else args.path.parent) / "genbound-report"
    ensure_writable(out, force=args.force)  # fail before the work, not after
    _check_report_inputs(args)
    job = _job(args, args.path, out, force=True)
    executor = _executor(args, out.with_name(out.name + "-slurm"))
    if executor.name != "local":  # one report, computed on the cluster
        (outcome,) = executor.run([job])
        if not outcome.ok:
            return _report_failures([outcome])
        done = outcome.folder
    else:
        stage = make_stage(report_stage_names(job.options))
        done, _ = run_report_job(job, stage=stage, progress=lambda it, n: track(it, n, "spectra"))
    print(f"report written to {done}/report.html (and report.md, report.json)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from genbound.cli.progress import make_stage, report_stage_names
    from genbound.demo import ALL, DEFAULT, FAST, STUDY
    from genbound.demo.run import run_demo
    from genbound.parallel import default_workers
    from genbound.report.writer import check_output_folder
    from genbound.sweep import LocalExecutor

    config = FAST if args.fast else STUDY if args.study else ALL if args.all else DEFAULT
    check_output_folder(args.out, what="demo folder", replaced=False)
    jobs = args.jobs if args.jobs is not None else default_workers()
    if jobs < 1:
        raise GenboundError(
            f"--jobs: expected a positive number of reports at a time; found {jobs}."
        )
    start = time.perf_counter()
    stage = make_stage(report_stage_names(config.report_options()))
    result = run_demo(
        args.out, config, force=args.force, stage=stage, executor=LocalExecutor(workers=jobs)
    )
    first = next(iter(result.reports))
    print(
        f"{len(result.runs)} runs ({len(result.trained)} trained now) in {args.out}/runs, "
        f"done in {time.perf_counter() - start:.0f} s\n"
        f"reports: {args.out}/reports/<run>/report.html (e.g. "
        f"{result.reports[first]}/report.html), with report.md and report.json\n"
        f"sweep comparison: {result.sweep}/sweep.md"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # OpenMP threads that wait for work sleep instead of spinning, so two single-threaded
    # workers (or a neighbour) keep their cores; only settable before OpenMP loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argument error already printed
        return int(exc.code or 0)
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
    except Exception as exc:  # a bug, not the input's fault: no traceback on screen
        import traceback

        log_path = _write_log(traceback.format_exc(), argv=sys.argv if argv is None else argv)
        print(
            f"genbound: internal error: {type(exc).__name__}: {_first_line(exc)}. This is a bug "
            f"in genbound, not a problem with your input; the details are in {log_path} "
            "(please include that file when you report it).",
            file=sys.stderr,
        )
        return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def _write_log(details: str, *, argv: Sequence[str] | None = None) -> str:
    """Write ``details`` (a traceback) to a new log file; its path, or a note if none could be
    written (the traceback then goes to stderr as the last resort)."""
    import os
    import tempfile
    import time

    header = (
        f"genbound {_version()}, python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\nargv: {list(argv or [])}\n\n"
    )
    from genbound.cache import cache_root

    for folder in (cache_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(
                prefix=f"genbound-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log", dir=folder
            )
            with os.fdopen(fd, "w") as fh:
                fh.write(header + details)
            return path
        except OSError:
            continue
    print(details, file=sys.stderr)
    return "the traceback above (no log file could be written)"


if __name__ == "__main__":
    sys.exit(main())
