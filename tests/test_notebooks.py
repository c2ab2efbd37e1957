"""The notebooks run top to bottom against a finished run, and are committed without outputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from deepfake.checkpoints import CheckpointError
from deepfake.data import DataError
from deepfake.submission import run_ensemble
from deepfake.io import write_json
from deepfake.notebook import CHECKPOINT_ENV, DATA_ENV, checkpoint_dir, data_dir
from deepfake.results import load_results, results_path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds


@pytest.fixture(scope="module")
def run_with_ensemble(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run's results and split with an ensemble added (checkpoints linked, only read)."""
    source = Path(tiny_run.checkpoint_dir)
    root = tmp_path_factory.mktemp("notebook_run")
    checkpoint_dir = root / "checkpoints"
    checkpoint_dir.mkdir()
    shutil.copy(source / "split.json", checkpoint_dir / "split.json")
    for checkpoint in source.glob("*.pt"):
        (checkpoint_dir / checkpoint.name).symlink_to(checkpoint)
    results = load_results(results_path(tiny_run.checkpoint_dir))
    results["config"].update(checkpoint_dir=str(checkpoint_dir), viz_dir=str(root / "visualizations"))
    write_json(results_path(checkpoint_dir), results)
    run_ensemble(checkpoint_dir, output=root / "submission.json", scheme="accuracy", device="cpu")
    return checkpoint_dir


@pytest.fixture
def kernel_env(monkeypatch, tmp_path, tiny_run, run_with_ensemble) -> None:
    """Kernels of this interpreter (not whatever "python3" a user's Jupyter config names) that read the fixture run."""
    write_kernel_spec(tmp_path / "kernels" / "python3")  # its argv is sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before the user's and the system's kernels
    monkeypatch.setenv(DATA_ENV, tiny_run.data_dir)
    monkeypatch.setenv(CHECKPOINT_ENV, str(run_with_ensemble))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch in the kernel: one thread, like the rest of the suite
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_folders_asked_for_but_empty_fail_naming_them(monkeypatch, tmp_path):
    # An explicit folder never falls back to demo data or a demo run: that would hide a typo.
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path))
    with pytest.raises(DataError, match=f"no labelled image folders in {tmp_path}"):
        data_dir()
    with pytest.raises(CheckpointError, match=f"no training run found in {tmp_path}"):
        checkpoint_dir()


def test_notebooks_are_found():
    assert [path.name for path in NOTEBOOKS] == [
        "01_data_exploration.ipynb", "02_results_analysis.ipynb", "03_attacks_and_gradcam.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_on_the_configured_run(path, kernel_env, tiny_run, run_with_ensemble):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()  # raises on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure was drawn"
    used = tiny_run.data_dir if path.stem.startswith("01") else str(run_with_ensemble)
    assert used in printed, f"{path.name} did not use {used} from the environment"
    if path.stem.startswith("02"):
        assert "accuracy-weighted ensemble of 3" in printed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_is_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"
