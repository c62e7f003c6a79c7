"""Every tutorial notebook runs top to bottom in its short mode (``PPL_VAE_SHORT=1``)."""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient: pip install -e '.[dev]'")
pytest.importorskip(
    "ipykernel", reason="needs ipykernel in this interpreter: pip install -e '.[dev]'"
)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# Appended to the copy that runs: which interpreter and which ppl_vae the kernel used.
PROBE = "import sys, ppl_vae; print(sys.executable); print(ppl_vae.__file__)"


def _errors(nb) -> list[str]:
    return [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells)
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2, (
        f"expected the tutorials in {REPO / 'notebooks'}, found {NOTEBOOKS}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_short_mode(path, tmp_path, monkeypatch):
    # The kernel inherits this environment. jupyter_client starts kernel "python3" with this
    # interpreter (sys.executable), and PYTHONPATH makes it import this checkout's ppl_vae.
    monkeypatch.setenv("PPL_VAE_SHORT", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    before = _listing(path.parent)

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed in short mode:\n{e}")

    assert not _errors(nb), f"{path.name}: cells with errors: {_errors(nb)}"
    probe = "".join(out.get("text", "") for out in nb.cells[-1].outputs).split()
    assert probe == [sys.executable, str(REPO / "ppl_vae" / "__init__.py")], (
        f"the kernel ran {probe}, not this interpreter and checkout "
        f"({sys.executable}, {REPO / 'ppl_vae'}); check `jupyter kernelspec list`"
    )
    after = _listing(path.parent)
    assert after == before, f"{path.name} wrote next to the notebooks: {sorted(after - before)}"
