"""examples/quickstart.ipynb runs headless, as Jupyter runs it (its own folder as the
working directory), and shows tables, a picture and a report."""

import pytest

from conftest import ROOT, require

nbformat = require("nbformat")
nbclient = require("nbclient")

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_the_quickstart_notebook_runs_and_shows_tables_a_picture_and_a_report():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    kinds = [
        set(out.get("data", {}))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "execute_result"
    ]
    tables = [k for k in kinds if "text/html" in k and "image/png" not in k]
    assert len(tables) >= 5, kinds
    assert any("image/png" in k for k in kinds), "no picture shown"
    html = [
        out["data"]["text/html"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "execute_result" and "text/html" in out.get("data", {})
    ]
    assert any("<iframe" in h and "srcdoc=" in h for h in html), "no report shown"
    # The last cell prints the caret text of a bad layer name.
    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    assert "unknown layer `fc3`" in printed and "^^^" in printed
