"""Property-based: any data array and any flags either train and evaluate, or exit 2 with one
line and no traceback; and no run claims a file it did not write."""

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ppl_vae.cli import main  # noqa: E402

DTYPES = [np.uint8, np.float32, np.float64, np.int64, np.bool_]


@st.composite
def arrays(draw):
    """Arrays of 0 to 4 dimensions, any of the dtypes above, values in [0, 1] or wider, with
    NaN or infinite entries now and then."""
    ndim = draw(st.sampled_from([2, 2, 2, 3, 3, 4, 1, 0]))
    sizes = st.sampled_from([3, 5, 7, 1, 0])
    shape = tuple(draw(st.lists(sizes, min_size=ndim, max_size=ndim)))
    if ndim:
        shape = (draw(st.sampled_from([25, 40, 12, 2, 0])), *shape[1:])
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["unit", "binary", "wide", "bytes"]))
    values = {
        "unit": rng.random(shape),
        "binary": rng.random(shape) > 0.5,
        "wide": rng.normal(0, 5, shape),
        "bytes": rng.integers(0, 256, shape),
    }[kind]
    a = np.asarray(values).astype(dtype)
    if a.dtype.kind == "f" and a.size and draw(st.integers(0, 3)) == 3:
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    return a


BAD_VALUES = {
    "--z-dim": ["0", "-1"],
    "--batch-size": ["0", "-5"],
    "--epochs": ["0"],
    "--eval-samples": ["0"],
    "--lr": ["-1", "nan", "1e9"],
}


@st.composite
def flags(draw):
    """Valid flags (any likelihood and binarization, as these must be checked against the
    data), with one of them given an out-of-range value in about a third of the cases."""
    chosen = {
        "--likelihood": draw(st.sampled_from(["bernoulli", "continuous-bernoulli", "gaussian"])),
        "--binarize": draw(st.sampled_from(["auto", "dynamic", "static", "threshold", "none"])),
        "--z-dim": draw(st.sampled_from(["1", "2", "3"])),
        "--batch-size": draw(st.sampled_from(["1", "7", "50"])),
        "--epochs": draw(st.sampled_from(["1", "2"])),
        "--eval-samples": draw(st.sampled_from(["1", "3"])),
        "--lr": "1e-3",
    }
    if draw(st.integers(0, 2)) == 2:
        flag = draw(st.sampled_from(sorted(BAD_VALUES)))
        chosen[flag] = draw(st.sampled_from(BAD_VALUES[flag]))
    return chosen


@settings(
    max_examples=60,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # CI: the same cases every run; here: new ones
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(array=arrays(), flags=flags(), npz=st.booleans())
def test_any_array_and_flags_train_or_exit_2_with_one_line(array, flags, npz, capsys):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / ("d.npz" if npz else "d.npy")
        if npz:
            np.savez(path, train=array)
        else:
            np.save(path, array)
        argv = ["train", "--dataset", str(path), "--hidden", "8", "--no-progress"]
        argv += [x for kv in flags.items() for x in kv] + ["--out", str(folder / "run")]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refusing a flag value
            code = e.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err + out
        if code == 0:
            wrote = re.search(r"^wrote (.*)$", out, re.M)
            assert wrote, out
            for name in wrote.group(1).split(", "):
                assert Path(name).is_file(), f"claimed {name}, which does not exist"
        else:
            assert code in (1, 2), (code, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            if code == 1:
                assert "diverged" in lines[0], f"not a bad-input line: {lines[0]}"
