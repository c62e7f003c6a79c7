"""The ``ppl-vae`` parser, its flags derived from the config dataclasses, and ``main``."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ppl_vae.cli.evaluate import cmd_evaluate
from ppl_vae.cli.pictures import cmd_latents, cmd_pictures, cmd_walk
from ppl_vae.cli.report import cmd_compare, cmd_report
from ppl_vae.cli.runs import RunConfig, check_device, read_config, run_device
from ppl_vae.cli.train import cmd_train
from ppl_vae.evaluation.walks import INTERPOLATIONS
from ppl_vae.program import ProgramError
from ppl_vae.runtime.distributed import init_from_env, launched, leave, world
from ppl_vae.training.checkpoint import CheckpointError
from ppl_vae.training.config import RESUMABLE, FitConfig
from ppl_vae.training.signals import Terminated

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit 2, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of a config dataclass, ``--field-name``, with the field's help."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "") + " (default: %(default)s)"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_
            )
            continue
        kind = {
            "int": int,
            "float": float,
            "int | None": int,
            "float | None": float,
            "str | None": str,
        }.get(str(f.type), str)
        choices = f.metadata.get("choices")
        parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=help_)


def build_parser() -> argparse.ArgumentParser:
    """The ``ppl-vae`` argument parser."""
    parser = _Parser(
        prog="ppl-vae",
        description="Variational autoencoders as Pyro programs: train, evaluate log p(x), draw.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        help="train a VAE, estimate test log p(x), draw pictures",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--out", default="runs/demo", help="run folder to write")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT where it stopped; only "
        + ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        + " may differ from its settings",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run that OUT holds, if any"
    )
    _add_dataclass_flags(train, RunConfig)
    _add_dataclass_flags(train, FitConfig)

    def run_dir_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("run_dir", help="a folder written by `ppl-vae train --out`")
        p.add_argument(
            "--split",
            default="test",
            choices=("train", "val", "test"),
            help="which split of the run's dataset (default: %(default)s)",
        )
        p.add_argument(
            "--dataset",
            default=None,
            help="evaluate on another dataset than the run's (same features)",
        )
        p.add_argument("--data-dir", default=None, help="folder with that dataset's files")
        p.add_argument("--device", default=None, help="torch device (default: the run's)")
        p.add_argument("--seed", type=int, default=0, help="seed of the draws")
        return p

    ev = run_dir_parser("evaluate", "importance-sampled log p(x) with diagnostics")
    ev.add_argument(
        "--num-samples",
        type=_count(1),
        default=1000,
        help="importance samples K per data point (default: %(default)s)",
    )
    ev.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    for name, help_ in (
        ("sample", "a PNG grid of samples from the model"),
        ("reconstruct", "a PNG grid of data and reconstructions"),
    ):
        p = run_dir_parser(name, help_)
        p.add_argument("--n", type=_count(1), default=100, help="images (default: %(default)s)")
        p.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    interp = run_dir_parser("interpolate", "decode points between two inputs' latent means")
    interp.add_argument("--from", dest="source", type=_count(0), default=0, help="first row")
    interp.add_argument("--to", dest="target", type=_count(0), default=1, help="last row")
    interp.add_argument("--steps", type=_count(2), default=10, help="points, endpoints included")
    interp.add_argument(
        "--kind", choices=(*INTERPOLATIONS, "both"), default="both", help="path between them"
    )
    interp.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    trav = run_dir_parser("traverse", "vary one latent dimension at a time, decoded")
    trav.add_argument("--row", type=_count(0), default=0, help="the input whose code is varied")
    trav.add_argument("--dims", type=_count(1), default=None, help="most-used dimensions shown")
    trav.add_argument(
        "--values", default="-3,-2,-1,0,1,2,3", help="values for each z_d (write --values=-2,0,2)"
    )
    trav.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    attr = run_dir_parser("attribute", "add the direction between two label groups' codes")
    attr.add_argument("--row", type=_count(0), default=0, help="the input to change")
    attr.add_argument("--from-label", dest="source", type=int, required=True, help="e.g. 3")
    attr.add_argument("--to-label", dest="target", type=int, required=True, help="e.g. 8")
    attr.add_argument("--factor", type=_count(0), default=0, help="label column (factor data)")
    attr.add_argument("--steps", type=_count(2), default=8, help="images from t = 0 to 1")
    attr.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/NAME.png)")
    cmp = sub.add_parser("compare", help="paired difference of log p(x) between two runs")
    cmp.add_argument("run_a", help="a run folder")
    cmp.add_argument("run_b", help="another run folder, trained on the same data")
    cmp.add_argument("--split", default="test", choices=("train", "val", "test"))
    cmp.add_argument("--dataset", default=None, help="evaluate both on another dataset")
    cmp.add_argument("--data-dir", default=None, help="folder with that dataset's files")
    cmp.add_argument("--device", default=None, help="torch device (default: each run's)")
    cmp.add_argument("--seed", type=int, default=0, help="seed of the draws, shared by both")
    cmp.add_argument("--num-samples", type=_count(1), default=1000, help="K per data point")
    cmp.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    cmp.add_argument("--json", action="store_true", help="print one JSON object")
    rep = run_dir_parser("report", "write RUN_DIR/report.md with every number and picture")
    rep.add_argument("--num-samples", type=_count(1), default=1000, help="K for log p(x)")
    rep.add_argument("--limit", type=_count(0), default=0, help="only the first N points (0: all)")
    lat = run_dir_parser("latents", "the latent means of a split in 2-D, coloured by label")
    lat.add_argument("--factor", type=_count(0), default=0, help="label column (factor data)")
    lat.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/latents.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppl-vae`` with ``argv`` (default: the command line); returns the exit code."""
    args = build_parser().parse_args(argv)
    commands = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "sample": cmd_pictures,
        "reconstruct": cmd_pictures,
        "interpolate": cmd_walk,
        "traverse": cmd_walk,
        "latents": cmd_latents,
        "attribute": cmd_walk,
        "report": cmd_report,
        "compare": cmd_compare,
    }
    if threading.current_thread() is threading.main_thread():
        # SIGTERM as Ctrl-C everywhere (fit holds both until its step ends): exit 143
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if launched():
            _join(args)
        return commands[args.command](args)
    except Exception as e:
        if args.debug:
            raise
        code = 1 if isinstance(e, FloatingPointError) else 2
        known = (ValueError, OSError, CheckpointError, ProgramError, FloatingPointError)
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not isinstance(e, known):
            code, text = 1, f"{type(e).__name__}: {text} (--debug shows where)"
        rank = f" (process {world().rank})" if world().active else ""
        print(f"ppl-vae {args.command}: error{rank}: {text}", file=sys.stderr)
        return code
    except KeyboardInterrupt as e:
        saved = ""
        if args.command == "train":  # stopped before the first step: no checkpoint to resume
            kept = (Path(args.out) / "checkpoint.pt").is_file()
            saved = (
                "; the checkpoint is saved (resume with --resume)" if kept else "; nothing saved"
            )
        terminated = isinstance(e, Terminated)
        if world().root:
            print(f"{'terminated' if terminated else 'interrupted'}{saved}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        leave()


def _join(args: argparse.Namespace) -> None:
    """Under torchrun: join the process group (gloo on CPU, NCCL on CUDA), each process on
    its own GPU when the device is ``cuda`` without an index."""
    if args.command not in ("train", "evaluate"):
        raise ValueError(
            f"ppl-vae {args.command} runs in one process; run it without torchrun (only train "
            "and evaluate share their work among processes)"
        )
    if args.command == "train":
        device = check_device(args.device)
    else:
        device = run_device(args.device, read_config(args.run_dir))
    _, device = init_from_env(device)
    args.device = str(device)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated
