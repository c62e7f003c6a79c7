"""Ours against pythae at equal wall time: the same network, prior and objective, each trained
for the same seconds on this machine, then scored on the same test digits with the same draws.

The pair is a row of ``benchmarks/mnist.py`` and the peer that trains the same networks
(default: ``vamp``, the seed network 784-300-300-50 with the VampPrior's 500 pseudo-inputs and a
3-epoch KL warm-up, against ``pythae-vamp``, pythae 0.1.2's VAMP on those very modules). Ours
runs ``ppl-vae train`` with the row's flags and is stopped by Ctrl-C (SIGINT) once ``--seconds``
have passed, which the trainer takes at the end of the step under way, checkpoint written. The
peer runs pythae's own ``BaseTrainer`` and stops at the first epoch end after ``--seconds``
(so it gets up to one epoch more). Each clock starts when its trainer starts, after the data
are read and the networks built. Both run one after the other in this process,
with the threads torch is given (``OMP_NUM_THREADS``). The two run folders are then compared by
``ppl-vae compare`` (paired per-point differences on the first ``--test-limit`` test digits, K =
``--samples``, common random numbers).

Usage (from the repository root; pythae: ``pip install pythae==0.1.2 --no-deps``)::

    OMP_NUM_THREADS=1 python benchmarks/peer_budget.py --seconds 1800 --out runs/peer-budget
    # or the two side by side, one core each, then the comparison:
    export OMP_NUM_THREADS=1; B="--seconds 1800 --out runs/peer-budget"
    python benchmarks/peer_budget.py $B --stage ours & python benchmarks/peer_budget.py $B \\
        --stage peer; wait; python benchmarks/peer_budget.py $B
    python benchmarks/peer_budget.py --dataset mnist5k --seconds 10 --samples 20 \\
        --test-limit 50 --out /tmp/peer-smoke                                 # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist  # noqa: E402
import torch  # noqa: E402
from _machine import cpu_model  # noqa: E402

#: the epoch budget handed to both trainers: the clock, not this, ends training
UNTIL_STOPPED = 1_000_000


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, required=True, help="wall time each trains for")
    p.add_argument("--ours", default="vamp", choices=list(mnist.ROWS), help="our row")
    p.add_argument("--peer", default="pythae-vamp", choices=list(mnist.PEERS), help="the peer")
    p.add_argument("--samples", type=int, default=1000, help="K for the test log p(x)")
    p.add_argument("--test-limit", type=int, default=1000, help="first N test points (0: all)")
    p.add_argument("--dataset", default="mnist", help="mnist, or mnist5k for a smoke run")
    p.add_argument("--data-dir", default=str(mnist.MNIST_DIR))
    p.add_argument("--binarize", default="dynamic", choices=("dynamic", "static"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/peer-budget", help="folder of the two run folders")
    p.add_argument(
        "--stage",
        default="all",
        choices=("all", "ours", "peer"),
        help="train only ours or only the peer (two processes side by side); all: both, then "
        "the comparison (a trained side is read back)",
    )
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error(f"--seconds must be positive, got {args.seconds:g}")
    # what mnist.py's row and peer trainers read: all training images, constant lr 1e-3
    args.epochs, args.val_size, args.lr_schedule = UNTIL_STOPPED, 0, "constant"
    return args


def _alarm_once_training(folder: Path, seconds: float) -> tuple[threading.Event, list[float]]:
    """A thread that waits for ``fit`` to lock ``folder`` (``folder/.lock``, taken before the
    first step, after the data are read and the program built), then sends this process
    Ctrl-C ``seconds`` later. Returns the event that cancels it and the list its start time
    is put in."""
    cancel, started = threading.Event(), []

    def watch() -> None:
        while not (folder / ".lock").is_file():
            if cancel.wait(0.02):
                return
        started.append(time.perf_counter())
        if not cancel.wait(seconds):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()
    return cancel, started


def train_ours(args: argparse.Namespace) -> dict:
    """Our row trained from scratch until ``--seconds`` after its trainer started; its
    metrics."""
    folder = Path(args.out) / args.ours
    if (done := mnist._finished(folder, seconds_budget=args.seconds)) is not None:
        return done
    shutil.rmtree(folder, ignore_errors=True)  # so that the lock marks this run's start
    cancel, started = _alarm_once_training(folder, args.seconds)
    try:
        code, printed = mnist._quiet(mnist.row_flags(args.ours, args))
    finally:
        cancel.set()
    if code != 130 or not started:  # 130: stopped by the alarm's Ctrl-C, checkpoint written
        raise SystemExit(f"{args.ours}: ppl-vae train ended with {code}:\n{printed}")
    seconds = time.perf_counter() - started[0]
    if not (folder / "checkpoint.pt").is_file():
        raise SystemExit(f"{args.ours}: stopped before its first step; give more --seconds")
    epochs = mnist.epoch_records(folder) or []
    metrics = {
        "epochs": args.epochs,
        "trained_epochs": len(epochs),  # whole epochs; the one under way counts its steps
        "train_seconds": seconds,
        "seconds_budget": args.seconds,
        "threads": torch.get_num_threads(),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def train_peer(args: argparse.Namespace) -> dict:
    """The peer trained from scratch until the first epoch end after ``--seconds``."""
    folder = Path(args.out) / args.peer
    if (done := mnist._finished(folder, seconds_budget=args.seconds)) is not None:
        return done
    (folder / "metrics.json").unlink(missing_ok=True)  # another budget's: train again
    metrics = mnist.train_peer(args.peer, args)
    metrics.update(seconds_budget=args.seconds, threads=torch.get_num_threads())
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def compare(args: argparse.Namespace) -> dict:
    """``ppl-vae compare OURS PEER`` on the test digits: A is ours, B the peer."""
    out = Path(args.out)
    flags = ["compare", str(out / args.ours), str(out / args.peer), "--json"]
    flags += ["--num-samples", str(args.samples), "--limit", str(args.test_limit)]
    flags += ["--seed", str(args.seed)]
    if mnist._idx_data(args):
        flags += ["--data-dir", args.data_dir]
    code, printed = mnist._quiet(flags)
    if code != 0:
        raise SystemExit(f"ppl-vae compare ended with {code}:\n{printed}")
    return json.loads(printed)


def table(ours: dict, peer: dict, paired: dict, args: argparse.Namespace) -> str:
    n = paired["num_points"]
    lines = [
        f"{args.dataset}, {args.binarize} binarization, {args.seconds:.0f} s each; "
        f"{cpu_model()}, {ours.get('threads', '?')} / {peer.get('threads', '?')} threads "
        f"(ours / peer), torch {torch.__version__}",
        f"test: K = {args.samples} on the first {n} points, the same draws for both",
        "| row | what | epochs | train s | test NLL | Pareto k > 0.7 |",
        "|---|---|---|---|---|---|",
    ]
    for name, what, metrics, side in (
        (args.ours, mnist.ROWS[args.ours][0], ours, "a"),
        (args.peer, mnist.PEERS[args.peer][0], peer, "b"),
    ):
        lines.append(
            f"| {name} | {what} | {metrics['trained_epochs']} | "
            f"{metrics['train_seconds']:.0f} | {-paired[f'log_likelihood_{side}']:.2f} | "
            f"{100 * paired[f'share_pareto_k_above_0.7_{side}']:.1f}% |"
        )
    lines.append(
        f"{args.peer} - {args.ours} NLL, paired: {paired['difference']:+.2f} +- "
        f"{paired['stderr_paired']:.2f} nats (ours better on {100 * paired['share_a_better']:.1f}%"
        " of the digits)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ours = train_ours(args) if args.stage in ("all", "ours") else None
    peer = train_peer(args) if args.stage in ("all", "peer") else None
    if ours is None or peer is None:
        return 0
    result = table(ours, peer, compare(args), args)
    print(result)
    (Path(args.out) / "table.md").write_text(result + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
