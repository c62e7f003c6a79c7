"""One row of the MNIST table trained as long as the machine allows, with its learning curve.

The row is one of ``benchmarks/mnist.py``'s (same flags, same data protocol), trained in
stages up to each milestone epoch by resuming its run folder (``ppl-vae train --resume
--epochs M``), so a stop loses at most the epoch under way and rerunning the same command
continues. At each milestone the test log p(x) is estimated on the first ``--curve-points``
test images with K = ``--curve-samples`` (seeded draws, the same points at every milestone),
and at the last milestone also with the table's K = 5000 on all 10,000 test images. The
curve is kept in ``OUT/ROW/curve.json`` (milestone -> estimate), drawn with the per-epoch
training loss into ``OUT/ROW/learning-curve.png``, and printed as a table.

Usage (from the repository root)::

    python benchmarks/long_run.py --row vamp --lr-schedule iwae \\
        --milestones 10 30 100 200 300 500 --out runs/long --goal 84.0
    python benchmarks/long_run.py --row seed --dataset mnist5k --milestones 1 2 \\
        --curve-samples 20 --curve-points 50 --samples 20 --test-limit 50 --out /tmp/lr-smoke

A milestone below the epochs the run folder already holds cannot be evaluated any more (the
weights have moved on); it is skipped with a note.

``--patience P`` stops the row by validation (``--val-size`` held-out images, or a dataset's
own validation split): training ends after P epochs without a better validation loss
(``ppl-vae train --patience``, which keeps the best epoch's weights), that epoch's run is
evaluated as the final milestone, and ``curve.json`` records where and why it stopped; the
same command afterwards only says so.

``--hours H`` bounds this invocation's wall time (a session that is stopped at a fixed time, say).
Before each stage the seconds an epoch takes (median of the last epochs in ``metrics.jsonl``) and
the evaluations' cost (from the last milestone's, scaled by samples x points) say whether the
next milestone and the final K = 5000 evaluation still fit. When they do not, the run trains as
many epochs as fit, makes that epoch its last milestone (with the final evaluation) and names
the milestones left; the same command later continues from there. Before the first epoch there
is nothing to measure, so a first stage longer than one epoch starts with a one-epoch stage,
and before the first milestone's evaluation its cost is not known and not reserved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist  # noqa: E402

clock = time.monotonic  # what --hours is counted on (a seam for the tests)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--row", required=True, choices=list(mnist.ROWS), help="a table row")
    p.add_argument("--milestones", type=int, nargs="+", default=[10, 30, 100, 300, 500])
    p.add_argument("--curve-samples", type=int, default=1000, help="K at each milestone")
    p.add_argument("--curve-points", type=int, default=2000, help="test points per milestone")
    p.add_argument("--samples", type=int, default=5000, help="K at the last milestone")
    p.add_argument("--test-limit", type=int, default=0, help="points there (0: all)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=str(mnist.MNIST_DIR))
    p.add_argument("--binarize", default="dynamic", choices=("dynamic", "static"))
    p.add_argument("--val-size", type=int, default=0)
    p.add_argument("--lr-schedule", default="iwae", help="as ppl-vae train's (default: iwae)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/long")
    p.add_argument("--goal", type=float, default=None, help="an NLL to draw as a dashed line")
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop by validation: after this many epochs without a better validation loss",
    )
    p.add_argument(
        "--hours",
        type=float,
        default=None,
        help="wall-time budget of this invocation: stop early, with the final evaluation",
    )
    args = p.parse_args(argv)
    milestones = sorted(set(args.milestones))
    if milestones[0] < 1:
        p.error("milestones are epoch counts, 1 or more")
    if args.lr_schedule in ("cosine", "plateau"):
        # cosine anneals over the run's epochs, so stages would each restart it; plateau reads
        # a validation loss that --val-size 0 does not have
        p.error(f"--lr-schedule {args.lr_schedule} does not extend across milestones; use iwae")
    if args.patience is not None and args.patience < 1:
        p.error("--patience counts epochs, 1 or more")
    if args.patience is not None and args.dataset == "mnist" and args.val_size == 0:
        p.error("--patience watches a validation loss: give --val-size N (e.g. 10000)")
    args.milestones = milestones
    if args.hours is not None and not args.hours > 0:
        p.error("--hours is a wall-time budget in hours, above 0")
    if args.dataset == "mnist" and not any(Path(args.data_dir).rglob("train-images*")):
        p.error(f"no MNIST IDX files in {args.data_dir}; pass --data-dir")
    return args


def _trained_epochs(folder: Path) -> int:
    done = folder / "metrics.json"
    return json.loads(done.read_text())["epochs"] if done.is_file() else 0


def _stage_args(args: argparse.Namespace, epochs: int, samples: int, limit: int):
    """The namespace mnist.train_row and mnist.evaluate_row read."""
    return argparse.Namespace(
        epochs=epochs,
        samples=samples,
        test_limit=limit,
        dataset=args.dataset,
        data_dir=args.data_dir,
        binarize=args.binarize,
        val_size=args.val_size,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        out=args.out,
        patience=args.patience,
    )


def _point(ev: dict) -> dict:
    keep = ("log_likelihood", "stderr", "stderr_points", "elbo", "share_pareto_k_above_0.7")
    timing = {k: ev[k] for k in ("num_points", "eval_seconds") if k in ev}
    return {k: ev[k] for k in keep} | {"active_units": ev.get("active_units")} | timing


def epoch_seconds(folder: Path, last: int = 10) -> float | None:
    """The median of the last ``last`` epochs' seconds in ``metrics.jsonl``; None before one."""
    seconds = [r["seconds"] for r in mnist.epoch_records(folder) or [] if "seconds" in r]
    return statistics.median(seconds[-last:]) if seconds else None


def _test_size(args: argparse.Namespace) -> int:
    from ppl_vae.data.datasets import load_dataset

    data_dir = args.data_dir if mnist._idx_data(args) else None
    val_size = args.val_size if mnist._idx_data(args) else None
    return len(load_dataset(args.dataset, data_dir=data_dir, val_size=val_size).test)


def eval_costs(args: argparse.Namespace, curve: dict) -> tuple[float, float]:
    """Seconds of one milestone's evaluation and of the final one, scaled from the latest
    timed milestone by samples x points; (0, 0) before any milestone was timed."""
    timed = [curve[m]["curve"] for m in sorted(curve, key=int)]
    timed = [c for c in timed if "eval_seconds" in c and c.get("num_points")]
    if not timed:
        return 0.0, 0.0
    last = timed[-1]
    per_draw = last["eval_seconds"] / (args.curve_samples * last["num_points"])
    every = last["num_points"] if last["num_points"] < args.curve_points else _test_size(args)
    final_points = min(args.test_limit, every) if args.test_limit else every
    return last["eval_seconds"], per_draw * args.samples * final_points


def budget_target(
    held: int, milestone: int, left: float, epoch_s: float, costs: tuple[float, float]
) -> int | None:
    """The epoch a stage trains to in ``left`` seconds: ``milestone`` when its epochs, its
    evaluation and the final one fit; else as many epochs as fit before those two evaluations
    (``held`` when none does); None when not even the evaluations fit."""
    evaluations = sum(costs)
    if (milestone - held) * epoch_s + evaluations <= left:
        return milestone
    spare = left - evaluations
    return None if spare < 0 else min(milestone, held + int(spare // epoch_s))


def run(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    deadline = None if args.hours is None else clock() + 3600 * args.hours
    folder = Path(args.out) / args.row
    folder.mkdir(parents=True, exist_ok=True)
    curve_file = folder / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else {}
    done = stopped(curve)
    if done is not None:
        print(f"{args.row}: {done}; nothing left to train", flush=True)
        print(table(args, curve))
        return curve
    for i, m in enumerate(args.milestones):
        if str(m) in curve:
            continue
        held = _trained_epochs(folder)
        if held > m:
            print(f"milestone {m}: skipped, the run folder already holds {held} epochs")
            continue
        target = m
        if deadline is not None:
            if epoch_seconds(folder) is None and m > held + 1:
                print(f"[{time.strftime('%H:%M:%S')}] {args.row}: one epoch first, to time it")
                mnist.train_row(args.row, _stage_args(args, held + 1, 0, 0))
                held += 1
            epoch_s, costs = epoch_seconds(folder), eval_costs(args, curve)
            if epoch_s is not None:  # else this stage is the one epoch that times the rest
                target = budget_target(held, m, deadline - clock(), epoch_s, costs)
            if not target:  # None, or 0 epochs: nothing to evaluate
                left = ", ".join(map(str, args.milestones[i:]))
                print(
                    f"--hours: stopped at epoch {held}: its evaluations need about "
                    f"{sum(costs):.0f} s, more than the "
                    f"{max(0.0, deadline - clock()):.0f} s left. Milestones left: "
                    f"{left}; the same command continues.",
                    flush=True,
                )
                break
        last = target < m or m == args.milestones[-1]
        print(f"[{time.strftime('%H:%M:%S')}] {args.row}: training to epoch {target}", flush=True)
        stage = _stage_args(args, target, args.curve_samples, args.curve_points)
        trained = mnist.train_row(args.row, stage)
        early = trained["epochs"] < target  # fit's patience ended the run
        if early:
            target, last = trained["epochs"], True
        entry = {"curve": _point(mnist.evaluate_row(args.row, stage))}
        entry["train_seconds"] = mnist.train_seconds(args.row, {}, stage)
        if last:
            final = _stage_args(args, target, args.samples, args.test_limit)
            entry["final"] = _point(mnist.evaluate_row(args.row, final))
        if early:
            entry["stopped_by_validation"] = _best_epoch(folder) | {"patience": args.patience}
        curve[str(target)] = entry
        curve_file.write_text(json.dumps(curve, indent=2) + "\n")
        draw(folder, args, curve)  # after every milestone, so a stopped run has its picture
        print(f"    test NLL {-entry['curve']['log_likelihood']:.2f} (curve)", flush=True)
        if early:
            print(f"{args.row}: {stopped(curve)}", flush=True)
            break
        if target < m:
            left = ", ".join(map(str, args.milestones[i:]))
            print(
                f"--hours: epoch {target} was the last that fit, evaluated as the final "
                f"milestone. Milestones left: {left}; the same command continues.",
                flush=True,
            )
            break
    print(table(args, curve))
    draw(folder, args, curve)
    return curve


def _best_epoch(folder: Path) -> dict:
    """The epoch of the best validation loss in ``metrics.jsonl``, and that loss."""
    records = [r for r in mnist.epoch_records(folder) or [] if "val_loss" in r]
    best = min(records, key=lambda r: r["val_loss"])
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"]}


def stopped(curve: dict) -> str | None:
    """How the row stopped by validation, if it did; None while it goes on."""
    for m in sorted(curve, key=int):
        why = curve[m].get("stopped_by_validation")
        if why is not None:
            return (
                f"stopped by validation at epoch {m}: no better validation loss in "
                f"{why['patience']} epochs after epoch {why['best_epoch']} "
                f"({why['best_val_loss']:.2f} nats), whose weights were evaluated"
            )
    return None


def table(args: argparse.Namespace, curve: dict) -> str:
    lines = [
        f"{args.row} ({mnist.ROWS[args.row][0]}), lr schedule {args.lr_schedule}, "
        f"{args.binarize} binarization, seed {args.seed}; {mnist.machine()}",
        f"curve: K = {args.curve_samples} on the first {args.curve_points} test points; "
        f"final: K = {args.samples} on {args.test_limit or 'all'} points",
        "| epochs | test NLL (curve) | +- (points) | test -ELBO | active units | "
        "Pareto k > 0.7 | test NLL (final) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in sorted(curve, key=int):
        c, f = curve[m]["curve"], curve[m].get("final")
        final = f"{-f['log_likelihood']:.2f} +- {f['stderr_points']:.2f}" if f else "-"
        pareto = mnist._fmt(100 * c["share_pareto_k_above_0.7"], 1)
        lines.append(
            f"| {m} | {-c['log_likelihood']:.2f} | {c['stderr_points']:.2f} | {-c['elbo']:.2f} "
            f"| {c['active_units']} | {pareto}% | {final} "
            f"| {curve[m]['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def draw(folder: Path, args: argparse.Namespace, curve: dict) -> None:
    """learning-curve.png: the per-epoch training loss and the milestones' test NLL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e for e in mnist.epoch_records(folder) or [] if "train_loss" in e]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(
        [e["epoch"] for e in epochs],
        [e["train_loss"] for e in epochs],
        lw=1,
        label="train loss (minus the training bound, beta-weighted in a warm-up)",
    )
    ms = sorted(curve, key=int)
    ax.plot(
        [int(m) for m in ms],
        [-curve[m]["curve"]["log_likelihood"] for m in ms],
        "o-",
        label=f"test NLL, K = {args.curve_samples}, {args.curve_points} points",
    )
    if args.goal is not None:
        ax.axhline(args.goal, ls="--", color="grey", lw=1, label=f"goal: {args.goal:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats")
    if len(epochs) > 3:  # the first epochs' loss would squash the rest
        ax.set_ylim(top=epochs[min(2, len(epochs) - 1)]["train_loss"])
    ax.set_title(f"{args.row}: {mnist.ROWS[args.row][0]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "learning-curve.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run(sys.argv[1:])
    sys.exit(0)
