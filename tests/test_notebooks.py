"""Notebooks run headless on a tiny sweep (nbclient), so they never rot."""

from __future__ import annotations

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from face_rec import analysis

from .conftest import REPO
from .test_sweep import _sweep

NOTEBOOK = REPO / "notebooks" / "compare_runs.ipynb"


@pytest.fixture(scope="module")
def sweep(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "sweep"
    _sweep(tiny, out, "head=softmax,cosface")
    return out


def test_notebooks_are_committed_without_outputs():
    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_compare_runs_executes_every_cell(sweep, monkeypatch):
    monkeypatch.setenv("FACE_REC_SWEEP", str(sweep))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    pngs = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4  # ROC overlay, false accepts, false rejects, distributions
    text = "".join(o.get("data", {}).get("text/markdown", "") for c in code for o in c.outputs)
    assert "## Settings (mean +- sample std over seeds)" in text and "head=cosface" in text


def test_hardest_errors_are_the_most_confident_mistakes(sweep):
    rp = analysis.load_run_pairs(analysis.best_run(sweep))
    errors = analysis.hardest_errors(rp, k=100)
    wrong = rp.accepted != rp.pairs.same
    assert sorted([*errors["false_accepts"], *errors["false_rejects"]]) == list(
        np.flatnonzero(wrong & ~np.isnan(rp.scores))
    )
    fa = rp.scores[errors["false_accepts"]]
    assert (fa[:-1] >= fa[1:]).all() and not rp.pairs.same[errors["false_accepts"]].any()
    fr = rp.scores[errors["false_rejects"]]
    assert (fr[:-1] <= fr[1:]).all() and rp.pairs.same[errors["false_rejects"]].all()
    norms = analysis.embedding_norms(rp)
    assert norms.shape == (len(rp.images.crops),) and (norms > 0).all()
