"""MNIST at the papers' budgets: every row trained and evaluated the same way, in one table.

Each row is a ``ppl-vae train`` run folder under ``--out`` (one folder per row, named after
it), so a row can be resumed, inspected, drawn, and compared with another by
``ppl-vae compare OUT/ROW_A OUT/ROW_B``. A row that has a checkpoint is resumed up to
``--epochs`` (a stop loses at most the epoch under way); one evaluated at that budget is
read back from its ``eval-K<samples>-n<points>.json``. Evaluation: ``ppl-vae evaluate`` on
the test split with K = ``--samples`` importance samples per point (5000 on all 10,000 test
images in the papers), draws seeded, so two rows are scored on the same points and draws.

Columns: test NLL (mean over points, standard error over points), test -ELBO, the average
KL(q(z|x) || p(z)) from ELBO surgery (one-latent-site rows with a Gaussian guide; "-"
elsewhere), active units (Burda et al.: Cov_x E_q[z_u] > 0.01, of the code ``encode``
gives), the share of points with PSIS Pareto k > 0.7 (where the estimate is biased low and its
Monte Carlo error understated), training and evaluation wall time.

Usage (from the repository root; MNIST's IDX files in ``../shared/data/mnist``)::

    nice python benchmarks/mnist.py --epochs 30                       # every row, 30 epochs
    nice python benchmarks/mnist.py --epochs 30 --rows seed seed-stl   # some rows
    python benchmarks/mnist.py --dataset mnist5k --epochs 1 --samples 20 --test-limit 50 \\
        --rows seed two-layer --out /tmp/mnist-smoke                   # a smoke run

Data: dynamically binarized MNIST (``--binarize static`` for one fixed draw), trained on all
60,000 training images as in the IWAE paper (``--val-size 0``; give 10000 to hold out a
validation split).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import torch

from ppl_vae.cli import main as cli

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _peers, _machine, run from anywhere
from _machine import cpu_model  # noqa: E402

#: two stochastic layers: the seed net's widths around z1, 100-100 around z2, flow prior on z2
_SEED_FLOW_2 = ["--preset", "iwae2", "--activation", "softplus", "--hidden", "300,300"]
_SEED_FLOW_2 += ["--z-dim", "50", "--prior", "flow", "--warmup", "3"]

#: row name -> (what it is, the ``ppl-vae train`` flags that make it)
ROWS: dict[str, tuple[str, list[str]]] = {
    # the seed network 784-300-300-50 softplus; objective x warm-up, for the defaults (every
    # row names its objective and warm-up, so that no row depends on the library's defaults)
    "seed": (
        "seed net, analytic KL, no warm-up",
        ["--preset", "seed", "--objective", "mean-field", "--warmup", "0"],
    ),
    "seed-warmup": (
        "seed net, analytic KL, 3-epoch warm-up",
        ["--preset", "seed", "--objective", "mean-field", "--warmup", "3"],
    ),
    "seed-stl": (
        "seed net, STL, no warm-up",
        ["--preset", "seed", "--objective", "stl", "--warmup", "0"],
    ),
    "seed-stl-warmup": (
        "seed net, STL, 3-epoch warm-up",
        ["--preset", "seed", "--objective", "stl", "--warmup", "3"],
    ),
    # the IWAE paper's one-layer network 784-200-200-50 tanh
    "iwae-vae": (
        "IWAE paper 1 layer, VAE (analytic KL)",
        ["--preset", "iwae", "--objective", "mean-field", "--warmup", "0"],
    ),
    "iwae-k5": (
        "IWAE paper 1 layer, IWAE k=5",
        ["--preset", "iwae", "--objective", "iwae", "--particles", "5"],
    ),
    "iwae-dreg5": (
        "IWAE paper 1 layer, IWAE-DReG k=5",
        ["--preset", "iwae", "--objective", "iwae-dreg", "--particles", "5"],
    ),
    "iwae-k50": (
        "IWAE paper 1 layer, IWAE k=50",
        ["--preset", "iwae", "--objective", "iwae", "--particles", "50"],
    ),
    "iwae-dreg50": (
        "IWAE paper 1 layer, IWAE-DReG k=50",
        ["--preset", "iwae", "--objective", "iwae-dreg", "--particles", "50"],
    ),
    # learned priors on the seed network (no closed-form KL: auto trains them with STL)
    "mixture": ("seed net, mixture prior (10)", ["--prior", "mixture", "--warmup", "3"]),
    "vamp": ("seed net, VampPrior (500)", ["--prior", "vamp", "--warmup", "3"]),
    "flow-prior": ("seed net, flow prior (4 coupling)", ["--prior", "flow", "--warmup", "3"]),
    "polymodal": ("seed net, polymodal latent (3)", ["--prior", "polymodal", "--warmup", "3"]),
    # the flow guide
    "flow-guide": ("seed net, IAF guide (2 steps)", ["--guide", "flow", "--warmup", "3"]),
    "flow-guide-vamp": (
        "seed net, IAF guide, VampPrior",
        ["--guide", "flow", "--prior", "vamp", "--warmup", "3"],
    ),
    "flow-guide-vamp-elbo": (  # STL scores an IAF off its own draw: z_dim inverse passes
        "seed net, IAF guide, VampPrior, ELBO (sampled KL)",
        ["--guide", "flow", "--prior", "vamp", "--warmup", "3", "--objective", "elbo"],
    ),
    "flow-guide-flow": (  # the flow prior was the best learned prior at 30 epochs
        "seed net, IAF guide, flow prior",
        ["--guide", "flow", "--prior", "flow", "--warmup", "3"],
    ),
    # two stochastic layers
    "two-layer": ("IWAE paper 2 layers, VAE (STL)", ["--preset", "iwae2", "--warmup", "3"]),
    "two-layer-softplus": (
        "2 layers, softplus, VAE (STL)",
        ["--preset", "iwae2", "--activation", "softplus", "--warmup", "3"],
    ),
    "two-layer-flow": (  # a learned prior on z2: the flow prior, best on one layer
        "2 layers, softplus, flow prior on z2",
        ["--preset", "iwae2", "--activation", "softplus", "--prior", "flow", "--warmup", "3"],
    ),
    "two-layer-seed-flow": (  # the seed net's widths below, the flow prior on z2
        "2 layers, seed widths (300-300-50, 100-100-50), flow prior on z2",
        _SEED_FLOW_2,
    ),
    "two-layer-seed-flow-td": (  # the same model, the guide in the model's order
        "2 layers, seed widths, flow prior on z2, top-down guide",
        [*_SEED_FLOW_2, "--guide-direction", "top-down"],
    ),
    "two-layer-seed-flow-k5": (  # the same model trained as IWAE, as the paper's 82.90 was
        "2 layers, seed widths, flow prior on z2, IWAE k=5 (no warm-up)",
        [*_SEED_FLOW_2[:-2], "--objective", "iwae", "--particles", "5"],
    ),
    "two-layer-k5": (
        "IWAE paper 2 layers, IWAE k=5",
        ["--preset", "iwae2", "--objective", "iwae", "--particles", "5"],
    ),
}

#: peer rows: row name -> (what it is, our preset and prior holding the networks, the trainer,
#: its IWAE particle count)
PEERS: dict[str, tuple[str, str, str, str, int]] = {
    "plain-vae": ("seed net, hand-written PyTorch VAE", "seed", "normal", "plain", 1),
    "pythae-vae": ("seed net, pythae 0.1.2 VAE", "seed", "normal", "vae", 1),
    "pythae-vamp": ("seed net, pythae 0.1.2 VAMP (500, warm-up 3)", "seed", "vamp", "vamp", 1),
    "pythae-iwae5": ("IWAE paper 1 layer, pythae 0.1.2 IWAE k=5", "iwae", "normal", "iwae", 5),
    "pythae-iwae50": ("IWAE paper 1 layer, pythae 0.1.2 IWAE k=50", "iwae", "normal", "iwae", 50),
}


def _idx_data(args: argparse.Namespace) -> bool:
    """Whether the dataset is one of the IDX families that take --data-dir and --val-size."""
    return args.dataset in ("mnist", "fashion-mnist", "kmnist")


def _finished(folder: Path, epochs: int | None = None, **budget: object) -> dict | None:
    """The row's metrics.json when it was trained for ``epochs`` (or for each ``budget`` key's
    value, e.g. ``seconds_budget``), else None."""
    done = folder / "metrics.json"
    if done.is_file():
        metrics = json.loads(done.read_text())
        budget = budget if epochs is None else {"epochs": epochs, **budget}
        if all(metrics.get(key) == value for key, value in budget.items()):
            return metrics
    return None


def _quiet(argv: list[str]) -> tuple[int, str]:
    """``ppl-vae ARGV`` in this process; its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(argv)
    return code, out.getvalue()


def row_flags(name: str, args: argparse.Namespace) -> list[str]:
    """The ``ppl-vae train`` flags of row ``name`` at ``--epochs`` (no --resume)."""
    folder = Path(args.out) / name
    flags = ["train", *ROWS[name][1], "--out", str(folder), "--epochs", str(args.epochs)]
    flags += ["--dataset", args.dataset, "--binarize", args.binarize, "--seed", str(args.seed)]
    flags += ["--eval-samples", "2", "--no-progress"]  # the table's evaluation comes next
    if _idx_data(args):
        flags += ["--data-dir", args.data_dir, "--val-size", str(args.val_size)]
    if args.lr_schedule != "constant":
        flags += ["--lr-schedule", args.lr_schedule]
    if getattr(args, "patience", None):  # long_run's stop by validation
        flags += ["--patience", str(args.patience)]
    return flags


def train_row(name: str, args: argparse.Namespace) -> dict:
    """Train (or resume) the row's run folder up to ``--epochs``; its metrics.json."""
    folder = Path(args.out) / name
    flags = row_flags(name, args)
    finished = _finished(folder, args.epochs)
    if finished is not None:
        return finished
    if (folder / "checkpoint.pt").is_file():
        flags.append("--resume")
    code, printed = _quiet(flags)
    if code != 0:
        raise SystemExit(f"row {name}: ppl-vae train failed ({code}):\n{printed}")
    return json.loads((folder / "metrics.json").read_text())


def train_peer(name: str, args: argparse.Namespace) -> dict:
    """Train a peer on our networks, then write them as a ppl-vae run folder (one epoch of
    ``fit`` at lr 0, which leaves every weight as the peer left it), so that ``ppl-vae
    evaluate`` and ``ppl-vae compare`` score it exactly as our rows. Not resumable inside the
    row: a stop retrains it."""
    import _peers

    from ppl_vae.cli.runs import RunConfig, load_data
    from ppl_vae.data.splits import binarize_splits
    from ppl_vae.models.build import build_program
    from ppl_vae.training.trainer import fit

    what, preset, prior, trainer, k = PEERS[name]
    folder = Path(args.out) / name
    finished = _finished(folder, args.epochs)
    if finished is not None:
        return finished
    mnist = _idx_data(args)
    run = RunConfig(
        dataset=args.dataset,
        data_dir=args.data_dir if mnist else None,
        val_size=args.val_size if mnist else None,
        preset=preset,
        prior=prior,
        binarize=args.binarize,
        eval_samples=2,
    )
    raw = load_data(dataclasses.replace(run, binarize="none"), seed=args.seed)
    torch.manual_seed(args.seed)
    program = build_program(run.recipe(raw.x_dim, raw.image_shape), raw.x_dim)
    data = binarize_splits(raw, args.binarize, args.seed)
    vae, dynamic = program.source, args.binarize == "dynamic"
    started = time.perf_counter()
    budget = getattr(args, "seconds", None)  # peer_budget.py's equal wall time
    if trainer == "plain":
        done = _peers.train_plain(vae, data.train, args.epochs, dynamic, args.seed, budget)
    else:
        model = _peers.pythae_model(trainer, vae, k=k, components=500, warmup=3)
        if model is None:
            raise SystemExit(f"row {name} needs pythae: pip install pythae==0.1.2 --no-deps")
        done = _peers.train_pythae(model, data.train, args.epochs, dynamic, args.seed, budget)
        if trainer == "vamp":
            with torch.no_grad():
                vae.prior.u.copy_(_peers.vamp_pseudo_inputs(model))
    seconds = time.perf_counter() - started
    info = {"run": dataclasses.asdict(run), "peer": what, "peer_epochs": args.epochs}
    with contextlib.redirect_stdout(io.StringIO()):
        fit(
            program,
            data,
            epochs=1,
            lr=0.0,
            out=folder,
            overwrite=True,
            progress=False,
            run_info=info,
        )
    metrics = {"epochs": args.epochs, "train_seconds": seconds, "peer": what}
    metrics["trained_epochs"] = done
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_row(name: str, args: argparse.Namespace) -> dict:
    """``ppl-vae evaluate`` on the test split, K = ``--samples``; cached per budget."""
    folder = Path(args.out) / name
    cache = folder / f"eval-K{args.samples}-n{args.test_limit or 'all'}.json"
    epochs = json.loads((folder / "metrics.json").read_text())["epochs"]
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("trained_epochs") == epochs:
            return saved
    flags = ["evaluate", str(folder), "--num-samples", str(args.samples), "--json"]
    flags += ["--limit", str(args.test_limit), "--seed", str(args.seed)]
    if _idx_data(args):
        flags += ["--data-dir", args.data_dir]
    started = time.perf_counter()
    code, printed = _quiet(flags)
    if code != 0:
        raise SystemExit(f"row {name}: ppl-vae evaluate failed ({code}):\n{printed}")
    result = json.loads(printed)
    result.update(trained_epochs=epochs, eval_seconds=time.perf_counter() - started)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def epoch_records(folder: Path) -> list[dict] | None:
    """The per-epoch records of a run folder's ``metrics.jsonl``; None when it has none."""
    log = folder / "metrics.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if "epoch" in r]


def train_seconds(name: str, trained: dict, args: argparse.Namespace) -> float:
    """Training time: the sum of the epochs' own times in metrics.jsonl (a resumed row counts
    each epoch once; evaluation, start-up and pauses are left out); a peer's own timing."""
    epochs = epoch_records(Path(args.out) / name)
    if name in PEERS or epochs is None:
        return trained["train_seconds"]
    return sum(e.get("seconds", 0.0) for e in epochs)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def table(results: dict[str, tuple[dict, dict]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.dataset}, {args.binarize} binarization, {args.epochs} epochs, seed {args.seed}; "
        f"test: K = {args.samples} on {args.test_limit or 'all'} points",
        "| row | what | test NLL | +- (points) | test -ELBO | avg KL | active units | "
        "Pareto k > 0.7 | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (trained, ev) in results.items():
        lines.append(
            f"| {name} | {(ROWS.get(name) or PEERS[name])[0]} | {_fmt(-ev['log_likelihood'])} | "
            f"{_fmt(ev['stderr_points'])} | {_fmt(-ev['elbo'])} | "
            f"{_fmt(ev.get('average_kl'))} | {ev.get('active_units', '-')} | "
            f"{_fmt(100 * ev['share_pareto_k_above_0.7'], 1)}% | "
            f"{train_seconds(name, trained, args):.0f} | {ev['eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows", nargs="+", default=[*ROWS, *PEERS], choices=[*ROWS, *PEERS], metavar="ROW"
    )
    p.add_argument("--epochs", type=int, default=30, help="epoch budget of every row")
    p.add_argument("--samples", type=int, default=5000, help="K for the test log p(x)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test points (0: all)")
    p.add_argument("--dataset", default="mnist", help="mnist, or mnist5k for a smoke run")
    p.add_argument("--data-dir", default=str(MNIST_DIR), help="MNIST's IDX files")
    p.add_argument("--binarize", default="dynamic", choices=("dynamic", "static"))
    p.add_argument("--val-size", type=int, default=0, help="held-out training images")
    p.add_argument("--lr-schedule", default="constant", help="as ppl-vae train's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/mnist", help="folder of the row folders")
    p.add_argument("--table", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.dataset == "mnist" and not any(Path(args.data_dir).rglob("train-images*")):
        p.error(f"no MNIST IDX files in {args.data_dir}; pass --data-dir")
    return args


def run(argv: list[str] | None = None) -> str:
    args = parse(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.rows:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
        trained = train_peer(name, args) if name in PEERS else train_row(name, args)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: evaluating", flush=True)
        results[name] = (trained, evaluate_row(name, args))
        nll = -results[name][1]["log_likelihood"]
        print(f"    test NLL {nll:.2f}", flush=True)
    text = f"{machine()}\n\n{table(results, args)}"
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    return text


if __name__ == "__main__":
    run(sys.argv[1:])
    sys.exit(0)
