"""Convolutional VAEs on images: the measured case for ``build_vae(..., net="conv")``.

Four parts, each a markdown table (``--only`` picks some), all in one JSON (``--json``,
default ``OUT/conv.json``), with the CPU model and torch's threads on top:

1. ``mnist``: conv against MLP on dynamically binarized MNIST (all 60,000 training images)
   at equal epochs, batch 100, Adam 1e-3 and the library's defaults otherwise (objective auto
   = STL, its KL warm-up), as ``ppl-vae train`` runs them. Rows (``--rows``): ``mlp``, the
   seed MLP 784-300-300-50 softplus (``--preset seed``); ``conv``, ``--net conv`` with its
   defaults (stride-2 4x4 convolutions of 32 and 64 channels, then one linear layer of 256 to
   the code of 50, ELU, and the mirror). Each row is a
   ``ppl-vae train`` run folder under ``--out``, trained, resumed and evaluated by
   ``benchmarks/mnist.py``'s ``train_row`` / ``evaluate_row`` (test log p(x) with K =
   ``--samples`` on the first ``--test-limit`` test points, draws seeded).
2. ``pythae``: pythae 0.1.2's VAE on its own convolutional MNIST networks
   (``Encoder_Conv_VAE_MNIST`` / ``Decoder_Conv_AE_MNIST``, 128 to 1024 channels with batch
   norm; z of the seed's 50), trained by its ``BaseTrainer`` for the same epochs on the same
   dynamically binarized images, then scored by our estimator (as ``ppl-vae evaluate`` runs
   it, on a small Pyro program around pythae's networks, Bernoulli logits taken before its
   sigmoid) side by side with the conv rows of part 1, all on the same test points with the
   same K and seed, with paired differences. Its decoder costs about 30 times ours a sample,
   so this table has its own K and points (``--pythae-samples``, ``--pythae-test-limit``).
   Skipped, saying so, where pythae is not installed.
3. ``speed``: ms per training step of the conv net (``--net conv``'s defaults), batch 100:
   ``fit`` (analytic-KL ELBO, and the defaults) against a hand-written PyTorch loop of the
   same modules (analytic KL, one draw, ``binary_cross_entropy_with_logits``, Adam),
   interleaved repeats, medians and ratios as in ``benchmarks/train_speed.py``. The goal:
   ``fit`` at most 1.1x the hand loop.
4. ``colour``: a colour image set drawn here (discs, squares and triangles of random colours
   on random backgrounds, ``--colour-size`` pixels a side, PNG files in class folders in a
   temporary folder), read back by ``load_dataset(FOLDER)``; a conv VAE (defaults) and the seed
   MLP under the discretized logistic likelihood (a mass on the 256 levels, so no
   discretization term) trained ``--colour-epochs`` epochs; test log p(x) in nats and bits
   per dimension. CIFAR-10 too where ``--cifar-dir`` holds its files.

Usage (from the repository root; MNIST's IDX files in ``../shared/data/mnist``)::

    nice python benchmarks/conv.py --epochs 30 --threads 2            # everything
    nice python benchmarks/conv.py --epochs 30 --only mnist speed      # some parts
    python benchmarks/conv.py --dataset mnist5k --epochs 1 --samples 8 --test-limit 12 \\
        --pythae-samples 8 --pythae-test-limit 12 --pythae-train-limit 100 \\
        --speed-rows 200 --repeats 1 --no-compile --colour-images 90 --colour-epochs 1 \\
        --out /tmp/conv-smoke                                          # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _peers, _machine, mnist
import _peers  # noqa: E402
import mnist  # noqa: E402
from _machine import cpu_model  # noqa: E402

from ppl_vae import build_vae, fit, load_dataset  # noqa: E402
from ppl_vae.cli.evaluate import evaluate, load_for_eval  # noqa: E402
from ppl_vae.evaluation import bits_per_dim  # noqa: E402
from ppl_vae.models.build import PRESETS  # noqa: E402
from ppl_vae.models.reference import plain_copy  # noqa: E402

PARTS = ("mnist", "pythae", "speed", "colour")

#: row name -> (what it is, the ``ppl-vae train`` flags that make it); everything else is the
#: library's default, as a user runs ``ppl-vae train``
ROWS: dict[str, tuple[str, list[str]]] = {
    "mlp": ("MLP 784-300-300-50 softplus (seed preset)", ["--preset", "seed"]),
    "conv": (
        "conv 32-64 (4x4, stride 2), then 256-50, ELU, and its mirror (--net conv's defaults)",
        ["--preset", "seed", "--net", "conv"],
    ),
}

#: the colour rows: (what, build_vae's network options): the conv net's defaults, and the
#: seed MLP for comparison
COLOUR_NETS: dict[str, tuple[str, dict[str, Any]]] = {
    "conv": (
        "conv 32-64, then 256-50, ELU (--net conv's defaults)",
        {"z_dim": 50, "net": "conv"},
    ),
    "mlp": ("MLP D-300-300-50 softplus (seed preset)", dict(PRESETS["seed"])),
}
SHAPES = ("disc", "square", "triangle")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _parameters(modules: Any) -> int:
    """Distinct parameters of the ``nn.Module`` s given."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def _quiet(run: Any, *a: Any, **kw: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return run(*a, **kw)


@contextlib.contextmanager
def _scratch():
    """A temporary folder that ``tempfile`` hands out inside, deleted afterwards (pythae's
    trainer writes a checkpoint of the model to a folder of its own)."""
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="conv-bench-") as folder:
        tempfile.tempdir = folder
        try:
            yield Path(folder)
        finally:
            tempfile.tempdir = before


# --- 1. conv against MLP on MNIST ---------------------------------------------------------


def mnist_args(args: argparse.Namespace) -> argparse.Namespace:
    """What ``mnist.train_row`` / ``evaluate_row`` read, for this script's rows."""
    mnist.ROWS.update(ROWS)  # those two look their rows' flags up in mnist.ROWS
    return argparse.Namespace(
        out=args.out,
        epochs=args.epochs,
        dataset=args.dataset,
        data_dir=args.data_dir,
        binarize="dynamic",
        val_size=0,
        lr_schedule="constant",
        seed=args.seed,
        samples=args.samples,
        test_limit=args.test_limit,
    )


def mnist_part(args: argparse.Namespace) -> dict[str, dict]:
    """Train and evaluate the MLP and conv rows; per row the table's numbers."""
    margs, results = mnist_args(args), {}
    for name in args.rows:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
        trained = mnist.train_row(name, margs)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: evaluating", flush=True)
        ev = mnist.evaluate_row(name, margs)
        folder = Path(args.out) / name
        run, data, _ = _quiet(load_for_eval, _eval_ns(folder))
        seconds = mnist.train_seconds(name, trained, margs)
        results[name] = {
            "what": ROWS[name][0],
            "log_likelihood": ev["log_likelihood"],
            "stderr_points": ev["stderr_points"],
            "stderr_mc": ev["stderr"],
            "elbo": ev["elbo"],
            "share_pareto_k_above_0.7": ev["share_pareto_k_above_0.7"],
            "seconds_per_epoch": seconds / args.epochs,
            "steps_per_epoch": math.ceil(len(data.train) / 100),
            "parameters": _parameters(m for _, m in run.program.modules()),
            "step_mode": trained.get("step_mode"),
            "eval_seconds": ev["eval_seconds"],
        }
    return results


def mnist_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    head = (
        f"{args.dataset}, dynamic binarization, {args.epochs} epochs, batch 100, Adam 1e-3, "
        f"library defaults (STL, warm-up), seed {args.seed}; test: K = {args.samples} on "
        f"{args.test_limit or 'all'} points"
    )
    header = ["row", "what", "test log p(x)", "+- (points)", "+- (MC)", "test ELBO"]
    header += ["s per epoch", "ms per step", "parameters", "eval s"]
    rows = [_quality_cells(name, r, r["stderr_mc"]) for name, r in results.items()]
    return f"{head}\n{_table(header, rows)}"


def _quality_cells(name: str, r: dict[str, Any], stderr_mc: float) -> list[str]:
    """A row of the quality tables (parts 1 and 2)."""
    return [
        name,
        r["what"],
        _fmt(r["log_likelihood"]),
        _fmt(r["stderr_points"]),
        _fmt(stderr_mc, 3),
        _fmt(r["elbo"]),
        _fmt(r["seconds_per_epoch"], 1),
        _fmt(1e3 * r["seconds_per_epoch"] / r["steps_per_epoch"], 1),
        f"{r['parameters']:,}",
        _fmt(r["eval_seconds"], 0),
    ]


# --- 2. against pythae's convolutional MNIST networks -------------------------------------


def _eval_ns(folder: Path) -> argparse.Namespace:
    return argparse.Namespace(
        run_dir=folder, device=None, dataset=None, data_dir=None, split="test"
    )


def pythae_part(args: argparse.Namespace) -> dict[str, Any]:
    """pythae's conv VAE trained by its trainer, and our conv rows, scored alike."""
    z_dim = int(PRESETS["seed"]["z_dim"])
    torch.manual_seed(args.seed)
    model = _peers.pythae_conv_mnist(z_dim)
    if model is None:
        return {"skipped": "pythae is not installed (pip install --no-deps pythae==0.1.2)"}
    if not any(name.startswith("conv") for name in args.rows):
        return {"rows": {}}
    margs = mnist_args(args)
    ours = [name for name in args.rows if name.startswith("conv")]
    runs = {}
    for name in ours:
        trained = mnist.train_row(name, margs)  # part 1's run, read back when it is there
        runs[name] = (trained, *_quiet(load_for_eval, _eval_ns(Path(args.out) / name)))
    _, _, data, x = runs[ours[0]]
    x = x[: args.pythae_test_limit] if args.pythae_test_limit else x
    raw = data.train  # grey levels: the binarization is dynamic
    if args.pythae_train_limit:
        raw = raw[: args.pythae_train_limit]
    print(f"[{time.strftime('%H:%M:%S')}] pythae: training", flush=True)
    started = time.perf_counter()
    with _scratch():
        _peers.train_pythae(model, raw.reshape(-1, 1, 28, 28), args.epochs, True, args.seed)
    pythae_seconds = (time.perf_counter() - started) / args.epochs
    model.eval()
    program = _peers.PythaeProgram(model)
    print(f"[{time.strftime('%H:%M:%S')}] pythae: evaluating", flush=True)
    scores, rows = {}, {}
    programs = {name: runs[name][1].program for name in ours}
    for name, prog in [*programs.items(), ("pythae-conv", program)]:
        pyro.clear_param_store()
        started = time.perf_counter()
        with torch.no_grad():
            scores[name] = score(prog, x, args.pythae_samples, args.seed)
        rows[name] = {**scores[name][1], "eval_seconds": time.perf_counter() - started}
    for name in ours:
        trained, run, data, _ = runs[name]
        rows[name].update(
            what=ROWS[name][0] + " (ours, part 1's run)",
            seconds_per_epoch=mnist.train_seconds(name, trained, margs) / args.epochs,
            steps_per_epoch=math.ceil(len(data.train) / 100),
            parameters=_parameters(m for _, m in run.program.modules()),
        )
    rows["pythae-conv"].update(
        what="pythae 0.1.2 VAE, Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST, BaseTrainer",
        seconds_per_epoch=pythae_seconds,
        steps_per_epoch=math.ceil(len(raw) / 100),
        parameters=_parameters([model.encoder, model.decoder]),
    )
    differences = {}
    for name in ours:
        diff = scores["pythae-conv"][0] - scores[name][0]  # (N,) paired on the same points
        se = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
        differences[name] = {"mean": diff.mean().item(), "se": se}
    return {"rows": rows, "differences": differences}


def score(program: Any, x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Our estimator on ``program``, as ``ppl-vae evaluate`` runs it (``evaluate``'s fields,
    without its second pass): per-point log p(x), shape (N,), and the summary."""
    from ppl_vae.evaluation.loglik import elbo, log_likelihood

    result = log_likelihood(
        program.model, program.guide, x, num_samples=k, diagnostics=True, seed=seed
    )
    summary = result.summary()
    bound = elbo(program.model, program.guide, x, num_samples=1, seed=seed).mean().item()
    spread = result.log_px.std().item() if len(x) > 1 else math.nan
    return result.log_px, {
        "log_likelihood": summary["log_px"],
        "stderr": summary["stderr_of_mean"],
        "stderr_points": spread / math.sqrt(len(x)),
        "elbo": bound,
        "share_pareto_k_above_0.7": summary["share_k_above_0.7"],
        "num_samples": k,
        "num_points": len(x),
    }


def pythae_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    if "skipped" in result:
        return f"pythae: skipped, {result['skipped']}"
    if not result["rows"]:
        return "pythae: skipped, no conv row in --rows"
    rows = result["rows"]
    first = next(iter(rows.values()))
    head = (
        f"{args.dataset}, dynamic binarization, {args.epochs} epochs, batch 100, Adam 1e-3; both "
        f"scored by ppl_vae's estimator: K = {first['num_samples']} on the first "
        f"{first['num_points']} test points, seed {args.seed}"
    )
    header = ["row", "what", "test log p(x)", "+- (points)", "+- (MC)", "test ELBO"]
    header += ["s per epoch", "ms per step", "parameters", "eval s"]
    body = [_quality_cells(name, r, r["stderr"]) for name, r in rows.items()]
    tail = "\n".join(
        f"pythae - {name}, log p(x) paired on the same points: {_fmt(d['mean'])} +- "
        f"{_fmt(d['se'])} nats"
        for name, d in result["differences"].items()
    )
    return f"{head}\n{_table(header, body)}\n{tail}"


# --- 3. the training step against a hand-written loop --------------------------------------


def hand_epoch(
    vae: Any, opt: torch.optim.Optimizer, x: torch.Tensor, gen: torch.Generator
) -> None:
    """The hand-written reference on ``vae``'s very networks: batch 100, each batch drawn
    afresh from its grey levels, analytic KL to N(0, I), one reparameterized draw, the
    Bernoulli log-likelihood by ``binary_cross_entropy_with_logits`` (``_peers.vae_terms``)."""
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), 100):
        xb = torch.bernoulli(x[order[i : i + 100]], generator=gen)
        recon, kl = _peers.vae_terms(vae, xb)
        loss = (recon + kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def speed_part(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """ms per step of each variant, interleaved (``train_speed.measure``)."""
    from train_speed import measure

    x = data.train[: args.speed_rows]
    train_only = dataclasses.replace(data, train=x, val=None)
    torch.manual_seed(args.seed)
    base = build_vae(data.x_dim, z_dim=50, net="conv", image_shape=data.image_shape)
    plain, own = plain_copy(base), copy.deepcopy(base)
    opts = {v: torch.optim.Adam(v.parameters(), lr=1e-3) for v in (plain, own)}
    gens = {v: torch.Generator().manual_seed(args.seed) for v in (plain, own)}
    same = {"objective": "mean-field", "warmup": 0}  # the hand-written loop's computation

    def run_fit(vae: Any, **options: Any):
        return lambda: _quiet(fit, vae, train_only, epochs=1, progress=False, **options)

    ref = "hand-written PyTorch loop (BCE with logits)"
    variants = {
        ref: lambda: hand_epoch(plain, opts[plain], x, gens[plain]),
        "the same loop on the library's modules": lambda: hand_epoch(own, opts[own], x, gens[own]),
        "ppl_vae.fit (analytic-KL ELBO)": run_fit(copy.deepcopy(base), **same),
        "ppl_vae.fit defaults (STL, KL warm-up)": run_fit(copy.deepcopy(base)),
    }
    if args.compile:
        variants["ppl_vae.fit (analytic KL), compile='compile'"] = run_fit(
            copy.deepcopy(base), compile="compile", **same
        )
        variants["ppl_vae.fit defaults, compile='compile' (auto's choice at 200+ steps)"] = (
            run_fit(copy.deepcopy(base), compile="compile")
        )
    steps = math.ceil(len(x) / 100)
    with pyro.validation_enabled(False):  # as from fit's 2nd epoch: compile replays at once
        times = measure(variants, args.repeats, steps)
    rows = {}
    for name, ts in times.items():
        ratios = [t / r for t, r in zip(ts, times[ref], strict=True)]
        rows[name] = {
            "ms_per_step": statistics.median(ts),
            "ratio": statistics.median(ts) / statistics.median(times[ref]),
            "ratio_range": [min(ratios), max(ratios)],
        }
    return {"rows": rows, "steps": steps, "rows_per_epoch": len(x), "repeats": args.repeats}


def speed_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    head = (
        f"conv net (--net conv's defaults, z 50), {args.dataset}, "
        f"{result['rows_per_epoch']} rows, batch 100, "
        f"{result['steps']} steps per epoch, median of {result['repeats']}, interleaved; goal: "
        "fit at most 1.1x the hand-written loop"
    )
    header = ["variant", "ms per step", "ratio to the hand loop", "range of ratios"]
    body = [
        [
            name,
            _fmt(r["ms_per_step"], 2),
            _fmt(r["ratio"], 3),
            f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}",
        ]
        for name, r in result["rows"].items()
    ]
    return f"{head}\n{_table(header, body)}"


# --- 4. colour images under the discretized logistic likelihood --------------------------


def draw_shapes(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` RGB PNG images of ``size`` x ``size``, one shape each (disc, square or
    triangle, in turn) of a random colour, place and size on a random background colour,
    with pixel noise (sd 3 levels); one subfolder per shape (the labels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        r = rng.uniform(0.2, 0.4) * size
        cx, cy = rng.uniform(r, size - r, 2)
        if shape == "disc":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        elif shape == "square":
            mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        else:  # apex up, base 2r at the bottom
            mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
        image = np.where(mask[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        image = image + rng.normal(0, 3, image.shape)
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / shape / f"{i:05d}.png")


def _bits_per_dim(log_px: float, x_dim: int) -> float:
    """-log p(x) / (D ln 2): the likelihood is a mass on the 256 levels, so no
    discretization term is added."""
    return float(bits_per_dim(log_px, x_dim, discretization_bits=0.0))


def colour_row(name: str, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A VAE of ``COLOUR_NETS`` (the part after the colon of ``name``) under the discretized
    logistic likelihood on ``data``: trained, scored."""
    what, net = COLOUR_NETS[name.split(":")[1]]
    torch.manual_seed(args.seed)
    vae = build_vae(
        data.x_dim, image_shape=data.image_shape, likelihood="discretized-logistic", **net
    )
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training", flush=True)
    started = time.perf_counter()
    _quiet(fit, vae, data, epochs=args.colour_epochs, progress=False, seed=args.seed)
    seconds = (time.perf_counter() - started) / args.colour_epochs
    limit = args.colour_test_limit
    x = data.test[:limit] if limit else data.test
    print(f"[{time.strftime('%H:%M:%S')}] {name}: evaluating", flush=True)
    vae.train(False)
    started = time.perf_counter()
    with torch.no_grad():
        ev = evaluate(vae, x, args.samples, False, args.seed)
    return {
        **ev,
        "what": what,
        "image_shape": list(data.image_shape),
        "train_rows": len(data.train),
        "bits_per_dim": _bits_per_dim(ev["log_likelihood"], data.x_dim),
        "elbo_bits_per_dim": _bits_per_dim(ev["elbo"], data.x_dim),
        "seconds_per_epoch": seconds,
        "parameters": _parameters([vae]),
        "eval_seconds": time.perf_counter() - started,
    }


def colour_part(args: argparse.Namespace) -> dict[str, Any]:
    rows = {}
    with tempfile.TemporaryDirectory(prefix="conv-shapes-") as folder:
        draw_shapes(Path(folder), args.colour_images, args.colour_size, args.seed)
        data = load_dataset(folder, binarization="none", seed=args.seed, colour="rgb")
    for net in COLOUR_NETS:
        rows[f"shapes:{net}"] = colour_row(f"shapes:{net}", data, args)
    if args.cifar_dir:
        cifar = load_dataset("cifar10", data_dir=args.cifar_dir, binarization="none")
        for net in COLOUR_NETS:
            rows[f"cifar10:{net}"] = colour_row(f"cifar10:{net}", cifar, args)
    return {"rows": rows, "epochs": args.colour_epochs}


def colour_table(result: dict[str, Any], args: argparse.Namespace) -> str:
    head = (
        f"discretized logistic likelihood (5 logistics a value), {result['epochs']} epochs, "
        f"batch 100, Adam 1e-3, library defaults (STL, warm-up); test: K = {args.samples} on "
        f"the first {args.colour_test_limit or 'all'} test points; bits/dim = -log p(x) / "
        "(D ln 2), no discretization term (a mass on the 256 levels)"
    )
    header = ["data:net", "what", "train images", "test points", "test log p(x)"]
    header += ["+- (points)", "bits/dim", "test ELBO", "ELBO bits/dim", "s per epoch"]
    header += ["parameters", "eval s"]
    body = [
        [
            name,
            r["what"],
            f"{r['train_rows']} x {'x'.join(str(s) for s in r['image_shape'])}",
            str(r["num_points"]),
            _fmt(r["log_likelihood"]),
            _fmt(r["stderr_points"]),
            _fmt(r["bits_per_dim"], 3),
            _fmt(r["elbo"]),
            _fmt(r["elbo_bits_per_dim"], 3),
            _fmt(r["seconds_per_epoch"], 1),
            f"{r['parameters']:,}",
            _fmt(r["eval_seconds"], 0),
        ]
        for name, r in result["rows"].items()
    ]
    return f"{head}\n{_table(header, body)}"


# --- the script -----------------------------------------------------------------------------


def machine() -> str:
    return (
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"pyro {pyro.__version__}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=list(PARTS), choices=PARTS, metavar="PART")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, metavar="ROW")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the MNIST rows and pythae")
    p.add_argument("--samples", type=int, default=5000, help="K for the test log p(x)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test points (0: all)")
    p.add_argument("--dataset", default="mnist", help="mnist, or mnist5k for a smoke run")
    p.add_argument("--data-dir", default=str(mnist.MNIST_DIR), help="MNIST's IDX files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/conv", help="folder of the run folders")
    p.add_argument("--json", default=None, help="results file (default OUT/conv.json)")
    p.add_argument("--pythae-samples", type=int, default=1000, help="K of the pythae table")
    p.add_argument("--pythae-test-limit", type=int, default=500, help="its test points (0: all)")
    p.add_argument(
        "--pythae-train-limit", type=int, default=0, help="pythae's training rows (0: all)"
    )
    p.add_argument("--speed-rows", type=int, default=10_000, help="rows per timed epoch")
    p.add_argument("--repeats", type=int, default=7, help="timed epochs per variant")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time fit with compile='compile' (a compile takes seconds)",
    )
    p.add_argument("--colour-images", type=int, default=4000, help="images drawn")
    p.add_argument("--colour-size", type=int, default=16, help="their side in pixels")
    p.add_argument("--colour-epochs", type=int, default=20)
    p.add_argument(
        "--colour-test-limit", type=int, default=1000, help="colour test points (0: all)"
    )
    p.add_argument("--cifar-dir", default=None, help="torchvision's CIFAR-10 root, if any")
    args = p.parse_args(argv)
    mnist_data = args.dataset == "mnist"
    if mnist_data and not any(Path(args.data_dir).rglob("train-images*")):
        p.error(f"no MNIST IDX files in {args.data_dir}; pass --data-dir")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Every part asked for: prints the tables, writes the JSON; returns the results."""
    args = parse(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    tables = []
    if "mnist" in args.only:
        results["mnist"] = mnist_part(args)
        tables.append(mnist_table(results["mnist"], args))
    if "pythae" in args.only:
        results["pythae"] = pythae_part(args)
        tables.append(pythae_table(results["pythae"], args))
    if "speed" in args.only:
        idx = mnist._idx_data(args)
        data = load_dataset(args.dataset, data_dir=args.data_dir if idx else None, seed=args.seed)
        results["speed"] = speed_part(args, data)
        tables.append(speed_table(results["speed"], args))
    if "colour" in args.only:
        results["colour"] = colour_part(args)
        tables.append(colour_table(results["colour"], args))
    text = "\n\n".join([results["machine"], *tables])
    print(text, flush=True)
    results["tables"] = text
    out = Path(args.json) if args.json else Path(args.out) / "conv.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    run(sys.argv[1:])
    sys.exit(0)
