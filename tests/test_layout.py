"""The house: the layers hold (import-linter), no module passes 400 lines, every public name
still imports, and a run folder written before the move into subpackages still loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppl_vae
from ppl_vae.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "run-before-layout"
MAX_LINES = 400

#: ``ppl_vae.__all__`` before the move (79df401): none of it may go
PUBLIC = """
FlowEncoder TwoLayerVAE MLP PRESETS VAE AnalyticKLELBO BernoulliLikelihood CSVTracker
ContinuousBernoulliLikelihood DataSplits Decoder FitConfig FitResult GaussianEncoder
GaussianLikelihood KLWeight LogLikelihood MLflowTracker FlowPrior MixturePrior NormalPrior
PolymodalPrior PolymodalVAE Program STLELBO TensorBoardTracker VampPrior as_program build_vae
closed_form_kl_sites elbo fit kl_weight load_dataset log_likelihood make_objective make_prior
negative_bound warmup_weight
""".split()

#: what ``ppl_vae.priors`` offered before the move
PRIORS = "FLOW_TYPES PRIORS FlowPrior MixturePrior NormalPrior PolymodalPrior VampPrior make_prior"


def _lint_imports() -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_layers_contract_holds():
    pytest.importorskip("importlinter", reason="needs import-linter: pip install -e '.[dev]'")
    done = _lint_imports()
    assert done.returncode == 0, f"lint-imports failed:\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("data/splits.py", "from ppl_vae.training import fit", "imports only the layers below"),
        ("training/engines.py", "from ppl_vae.models import VAE", "not the models"),
        ("models/vae.py", "from ppl_vae.models.build import build_vae", "builder that knows"),
        ("priors/normal.py", "from ppl_vae.priors import factory", "No import cycle"),
    ],
    ids=["upward", "training-to-models", "model-to-builder", "cycle"],
)
def test_each_contract_can_fail(tmp_path, module, line, broken):
    """A copy of the package with one forbidden import added is refused, by the contract it
    breaks."""
    pytest.importorskip("importlinter", reason="needs import-linter: pip install -e '.[dev]'")
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "ppl_vae", copy / "ppl_vae")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    path = copy / "ppl_vae" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        command, cwd=copy, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode != 0, f"{line} in {module} passed the contracts:\n{done.stdout}"
    # an upward import also closes a cycle, so the acyclic contract may break beside it
    lines = [x for x in done.stdout.splitlines() if "BROKEN" in x]
    assert any(broken in x for x in lines), done.stdout


def test_no_module_passes_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "ppl_vae").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_public_name_of_before_the_move_still_imports():
    missing = [name for name in PUBLIC if name not in ppl_vae.__all__]
    assert not missing, f"gone from ppl_vae.__all__: {missing}"
    for name in ppl_vae.__all__:
        assert hasattr(ppl_vae, name), f"ppl_vae.__all__ names {name}, which does not import"
    import ppl_vae.priors as priors

    gone = [name for name in PRIORS.split() if not hasattr(priors, name)]
    assert not gone, f"ppl_vae.priors no longer offers {gone}"


FLAGS = ["--dataset", "digits", "--preset", "small", "--hidden", "16", "--z-dim", "4"]
FLAGS += ["--eval-samples", "10", "--no-progress"]


def test_a_run_folder_written_before_the_move_resumes_and_evaluates(tmp_path, capsys):
    """The folder in tests/fixtures was trained for 2 epochs by the flat layout (79df401).
    Resumed to epoch 3 and evaluated here, it gives what that code gave (expected.json)."""
    expected = json.loads((FIXTURE / "expected.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "expected.json").unlink()

    assert main(["evaluate", str(run), "--num-samples", "10", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = expected["evaluate_num_samples_10"]
    assert got["num_points"] == want["num_points"]
    for key in ("log_likelihood", "elbo"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)

    assert main(["train", *FLAGS, "--resume", "--epochs", "3", "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3], "the resumed run kept its two epochs"
    want = expected["resumed_to_epoch_3"]
    for key in ("train_loss", "val_loss", "val_reconstruction", "val_kl"):
        torch.testing.assert_close(records[-1][key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file(), "report wrote no report.md"


def test_the_architecture_page_matches_the_code():
    """docs/architecture.md's graph and module table are generated from the import graph;
    a module added, moved or grown without rerunning docs/layers.py fails here."""
    pytest.importorskip("grimp", reason="needs import-linter: pip install -e '.[dev]'")
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import layers
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert layers.main(["--check"]) == 0, "docs/architecture.md is stale: python docs/layers.py"
