"""``genbound``: inspect checkpoints, write reports, run the demo.

User errors (bad paths, inconsistent checkpoints) print one paragraph to stderr and
exit with status 2; no traceback is shown for them.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--out", type=Path, help="report folder (default: <checkpoint>/genbound-report)")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="build a checkpoint of a real model and report on it")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("genbound-demo"),
        help="demo folder (default: ./genbound-demo)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing demo folder")
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


def _report(ckpt, out: Path, *, force: bool) -> Path:
    from genbound.cli.progress import track
    from genbound.report import ensure_writable, write_report
    from genbound.report.measures import data_free_measures

    ensure_writable(out, force=force)  # fail before the work, not after
    measures = data_free_measures(ckpt, progress=lambda it, n: track(it, n, "spectra"))
    return write_report(ckpt, out, measures, force=force)


def _cmd_report(args: argparse.Namespace) -> int:
    ckpt = _load(args)
    out = args.out or (args.path if args.path.is_dir() else args.path.parent) / "genbound-report"
    done = _report(ckpt, out, force=args.force)
    print(f"report written to {done}/report.md (and report.json)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from genbound.demo import build_demo_checkpoint

    ckpt_dir = build_demo_checkpoint(args.out, force=args.force)
    print(f"built checkpoint {ckpt_dir}")
    ckpt = _load(argparse.Namespace(path=ckpt_dir, base=None, adapter=None, n_train=None))
    done = _report(ckpt, args.out / "report", force=True)
    print(f"report written to {done}/report.md (and report.json)")
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
