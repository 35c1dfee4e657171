"""`notebooks/quickstart.ipynb` executes top to bottom (nbclient), on the tiny corpus with 2 unlearning steps."""

import os
from pathlib import Path

import pytest


nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"
TINY_PARAMETERS = 'CORPUS_PRESET = "tiny"\nMAX_STEPS = 2\nOUTPUT_ROOT = "outputs/quickstart"\n'


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(QUICKSTART, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip outputs before committing"


@pytest.mark.timeout(600)
def test_quickstart_runs_on_the_tiny_corpus(tmp_path, monkeypatch):
    notebook = nbformat.read(QUICKSTART, as_version=4)
    (parameters,) = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    parameters.source = TINY_PARAMETERS
    # The kernel inherits this environment: the shared cache (conftest) and this checkout on the path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    text = "\n".join(
        output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "rank 0: world size 2" in text and "rank 1: world size 2" in text
    assert "| unlearned |" in text and "| two processes |" in text
    assert (tmp_path / "outputs/quickstart/graddiff/training_curves.png").is_file()
    assert (tmp_path / "outputs/quickstart/graddiff-2proc/metrics.json").is_file()
    assert (tmp_path / "outputs/quickstart/graddiff/README.md").is_file()
