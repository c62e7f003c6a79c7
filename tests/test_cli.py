"""The ppl-vae command, run in-process on the embedded digits."""

import json
from pathlib import Path

import pytest

from ppl_vae.cli import build_parser, main
from ppl_vae.cli.runs import RunConfig
from ppl_vae.training.config import FitConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "2"]
    code = main([*argv, "--eval-samples", "50", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_train_writes_metrics_checkpoint_and_pictures(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert test["log_likelihood"] < 0 and test["num_points"] == 180
    assert test["log_likelihood"] >= test["elbo"] - 3 * test["stderr"] - 0.5
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl", "samples.png", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "reconstructions.png").stat().st_size > 1000
    assert metrics["step_mode"] == "eager"  # --compile auto: digits' epochs are short


def test_train_with_a_traced_step_says_so(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "2"]
    assert main([*argv, "--compile", "trace", "--eval-samples", "2", "--out", str(tmp_path)]) == 0
    assert "epoch 2: traced (the step's graph replayed)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step_mode"].startswith("traced")


def test_evaluate_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--num-samples", "20", "--json", "--limit", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("log_likelihood", "elbo", "stderr", "share_pareto_k_above_0.7"):
        assert key in out, key
    assert out["num_points"] == 30


def test_sample_and_reconstruct(run_dir, tmp_path):
    assert main(["sample", str(run_dir), "--output", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run_dir), "--n", "20"]) == 0
    assert (tmp_path / "s.png").is_file() and (run_dir / "reconstruct.png").is_file()


def test_evaluating_on_data_of_another_shape_is_a_clear_error(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--dataset", "mnist5k", "--limit", "5"]) == 2
    assert "784 features per row but the saved model expects 64" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run_dir / "config.json").read_text())
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["sample", str(broken)]) == 2
    assert "unreadable" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for cls in (RunConfig, FitConfig):
        for field in cls.__dataclass_fields__:
            assert "--" + field.replace("_", "-") in text, field


@pytest.mark.parametrize(
    "flag, value", [("--flow-type", "planar"), ("--prior", "gmm"), ("--objective", "kl")]
)
def test_unknown_choices_are_refused_with_the_list(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", flag, value])
    assert exit_.value.code == 2
    assert f"invalid choice: '{value}'" in capsys.readouterr().err


TESTS = Path(__file__).parent


def test_train_a_user_program_then_evaluate_and_draw_it(tmp_path, capsys):
    out = tmp_path / "mine"
    spec = f"{TESTS / 'programs.py'}:drawing_vae"
    argv = ["train", "--model", spec, "--model-args", '{"z_dim": 3}', "--dataset", "digits"]
    assert main([*argv, "--epochs", "2", "--eval-samples", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "binarization: dynamic" in printed and "DrawingVAE" in printed
    doc = json.loads((out / "config.json").read_text())
    assert doc["program"]["builder"] == "factory" and doc["program"]["kwargs"]["z_dim"] == 3
    assert main(["evaluate", str(out), "--num-samples", "30", "--json", "--limit", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_points"] == 20 and metrics["log_likelihood"] < 0
    trained = json.loads((out / "metrics.json").read_text())["test"]["log_likelihood"]
    assert abs(metrics["log_likelihood"] - trained) < 15, "evaluate loaded other weights"
    assert main(["sample", str(out)]) == 0 and (out / "sample.png").is_file()
    assert (out / "samples.png").is_file() and (out / "reconstructions.png").is_file()


def test_a_program_without_sample_says_which_method_is_missing(tmp_path, capsys):
    out = tmp_path / "plain"
    spec = f"{TESTS / 'programs.py'}:example_vae"
    argv = ["train", "--model", spec, "--dataset", "digits", "--epochs", "1", "--out", str(out)]
    assert main([*argv, "--eval-samples", "10", "--no-progress"]) == 0
    assert "no pictures from sample(), reconstruct()" in capsys.readouterr().out
    assert main(["sample", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs a method sample(), which the program ExampleVAE lacks" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_folder_written_by_fit_in_python_is_read_by_the_cli(tmp_path, capsys):
    from ppl_vae import build_vae, fit
    from ppl_vae.data.datasets import load_dataset

    data = load_dataset("digits", binarization="dynamic")
    fit(build_vae(64, z_dim=2, hidden=(16,)), data, epochs=1, out=tmp_path, progress=False)
    assert main(["evaluate", str(tmp_path), "--num-samples", "10", "--limit", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_points"] == 5
    assert main(["reconstruct", str(tmp_path), "--n", "10"]) == 0


def test_grey_levels_under_a_gaussian_likelihood_stay_grey(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["train", "--dataset", "digits", "--preset", "small", "--likelihood", "gaussian"]
    assert main([*argv, "--epochs", "1", "--eval-samples", "10", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["binarization"] == "none"
    assert main([*argv, "--binarize", "dynamic", "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "--binarize dynamic only goes with a Bernoulli likelihood" in err


def test_a_factory_of_plain_functions_with_pyro_params_round_trips(tmp_path, capsys):
    """Its parameters live in Pyro's param store, not in a module: evaluate must create them
    on a batch, then load the trained values (else it would score the initial ones)."""
    out = tmp_path / "fns"
    spec = f"{TESTS / 'programs.py'}:functions"
    argv = ["train", "--model", spec, "--dataset", "digits", "--epochs", "3", "--lr", "0.01"]
    assert main([*argv, "--eval-samples", "20", "--out", str(out), "--no-progress"]) == 0
    trained = json.loads((out / "metrics.json").read_text())["test"]
    capsys.readouterr()
    import pyro

    pyro.clear_param_store()  # as in a new process
    assert main(["evaluate", str(out), "--num-samples", "20", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert abs(again["elbo"] - trained["elbo"]) < 1.0, (again["elbo"], trained["elbo"])


def test_evaluate_reports_the_monte_carlo_error_and_the_spread_over_points(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--num-samples", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stderr_points"] == pytest.approx(out["spread"] / out["num_points"] ** 0.5)
    # on these digits the points differ far more than the draws do
    assert out["stderr_points"] > 5 * out["stderr"], out


def test_compare_gives_the_paired_difference_on_the_same_points_and_draws(
    run_dir, tmp_path, capsys
):
    other = tmp_path / "other"
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "20", "--out", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    flags = ["--num-samples", "40", "--json", "--seed", "3"]
    assert main(["compare", str(run_dir), str(other), *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["difference"] == pytest.approx(out["log_likelihood_a"] - out["log_likelihood_b"])
    assert out["num_points"] == 180 and 0 <= out["share_a_better"] <= 1
    # the same estimates evaluate gives with the same seed
    assert main(["evaluate", str(other), "--num-samples", "40", "--json", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["log_likelihood"] == pytest.approx(
        out["log_likelihood_b"], abs=1e-5
    )
    assert main(["compare", str(run_dir), str(run_dir), *flags]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["difference"] == 0 and same["stderr_paired"] == 0


def test_compare_refuses_runs_on_other_data_in_one_line(run_dir, tmp_path, capsys):
    other = tmp_path / "sprites"
    argv = ["train", "--dataset", "sprites", "--preset", "small", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "5", "--out", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(other), "--num-samples", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "compare runs on the same data" in err and len(err.splitlines()) == 1, err


def test_a_warmup_as_long_as_the_run_is_noted(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1", "--warmup", "1"]
    assert main([*argv, "--eval-samples", "5", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "the KL weight never reaches --beta 1" in capsys.readouterr().out


def test_compare_refuses_the_same_data_set_binarized_otherwise(run_dir, tmp_path, capsys):
    other = tmp_path / "static"
    argv = ["train", "--dataset", "digits", "--preset", "small", "--epochs", "1"]
    argv += ["--binarize", "static", "--seed", "5", "--eval-samples", "5"]
    assert main([*argv, "--out", str(other), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(other), "--num-samples", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "points of" in err and "differ" in err and len(err.splitlines()) == 1, err


def test_ctrl_c_before_the_first_step_does_not_claim_a_saved_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """Ctrl-C while the data still load: exit 130, and the message says nothing was saved
    (it must not send the user to --resume a checkpoint that does not exist)."""

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("ppl_vae.cli.parser.cmd_train", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "mnist5k", "--epochs", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "nothing saved" in err and "--resume" not in err, err
