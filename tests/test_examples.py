"""The example notebooks (examples/*.ipynb) run top to bottom, offline, and show their figures inline.

Each notebook is executed in memory (nothing is written into examples/) in a Jupyter kernel of this very
interpreter, with HF_HUB_OFFLINE=1: without cached weights npgpt.load fails at once and the notebooks fall
back to an untrained GPT-2. Cells tagged "npgpt-figure" end with a figure from npgpt.plots and must show it
once; cells tagged "user-figure" draw with plain matplotlib (plt.show()) and must show it too, which, after
npgpt's figures, proves npgpt left matplotlib's inline backend alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the example notebooks need nbformat: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="the example notebooks need nbclient: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="the example notebooks need ipykernel: pip install -e '.[test]'")
pytest.importorskip("matplotlib", reason="the example notebooks need matplotlib: pip install -e '.[test]'")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 (installed with nbclient)
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
NPGPT_FIGURE, USER_FIGURE = "npgpt-figure", "user-figure"
KERNEL = "npgpt-examples"
CELL_TIMEOUT = 300  # seconds; a whole notebook takes well under a minute on two cores


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def images(cell) -> int:
    """How many PNG images a code cell's outputs hold."""
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def read(path: Path):
    return nbformat.read(path, as_version=4)


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A kernelspec for this interpreter, found by name whatever other Jupyter kernels are installed (a user's
    "python3" may be another Python). Its environment keeps the kernel off the network, imports this checkout's
    npgpt, and uses the inline backend even where MPLBACKEND=Agg is set for the tests, and a fresh IPython
    profile."""
    home = tmp_path_factory.mktemp("jupyter")
    kernels = home / "kernels"
    spec = kernels / KERNEL
    spec.mkdir(parents=True)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "npgpt examples",
        "language": "python",
        "env": {
            "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONPATH": pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "IPYTHONDIR": str(home / "ipython"),  # no user profile or startup script changes the kernel
        },
    }))
    return [str(kernels)]


def execute(path: Path, kernel_dirs: list[str], cwd: Path):
    """The notebook, executed in memory; a failing cell raises nbclient's CellExecutionError."""
    nb = read(path)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {EXAMPLES}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_tags_match_the_code(path):
    """The tags the execution test relies on say what the cells do."""
    for i, cell in enumerate(read(path).cells):
        if NPGPT_FIGURE in tags(cell):
            assert "npgpt.plots." in cell.source, f"{path.name}: cell {i} is tagged {NPGPT_FIGURE} but draws none"
        if USER_FIGURE in tags(cell):
            assert "plt.show()" in cell.source, f"{path.name}: cell {i} is tagged {USER_FIGURE} but shows none"


def test_a_user_figure_follows_npgpt_figures():
    """At least one notebook draws with plain matplotlib after npgpt has drawn (the check of the backend)."""
    def after(nb):
        kinds = [t for cell in nb.cells for t in tags(cell) if t in (NPGPT_FIGURE, USER_FIGURE)]
        return NPGPT_FIGURE in kinds and USER_FIGURE in kinds[kinds.index(NPGPT_FIGURE):]

    assert any(after(read(p)) for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_shows_its_figures(path, kernel_dirs, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in EXAMPLES.rglob("*")}
    nb = execute(path, kernel_dirs, cwd=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in EXAMPLES.rglob("*")} == before, "executing wrote into examples/"

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"{path.name}: cell {i}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        if NPGPT_FIGURE in tags(cell):
            assert images(cell) == 1, (f"{path.name}: cell {i} should show npgpt's figure once, shows "
                                       f"{images(cell)} images:\n{cell.source}")
        if USER_FIGURE in tags(cell):
            assert images(cell) >= 1, (f"{path.name}: cell {i}'s plain matplotlib figure did not show (was the "
                                       f"inline backend switched off?):\n{cell.source}")
