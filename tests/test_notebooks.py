"""notebooks/helm_quickstart.ipynb runs top to bottom (headless, tiny setting).

The notebook is executed with nbclient in a fresh kernel with ``HELM_QUICKSTART_TINY=1``
(2 molecules' worth of work: 12 structures labelled, 10 training steps of the smallest
network); a cell that raises fails the test. The printed results are then checked.
"""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "helm_quickstart.ipynb")


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.slow
def test_quickstart_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("HELM_QUICKSTART_TINY", "1")
    monkeypatch.setenv("HELM_QUICKSTART_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    out = _stdout(nb)
    assert "Not in Colab" in out
    assert re.search(r"found CPU backend with \d+ device", out)
    assert "Labelled 12 training structures and 1 held-out structure at HF/def2-svp" in out
    assert "trained 10 steps" in out
    h_mae = float(re.search(r"H MAE (\d+) uEh;", out).group(1))
    assert 0 < h_mae < 1e6  # micro-Hartree: finite and not absurd after 10 steps
    minao = int(re.search(r"SCF cycles from minao: +(\d+)", out).group(1))
    oracle = int(re.search(r"SCF cycles from reference H: +(\d+)", out).group(1))
    assert oracle < minao  # the reference H's density is (nearly) converged already
    assert "same converged energy (1e-6 Eh): True" in out
    assert "max |H(reloaded) - H(original)| = 0.0e+00 Eh" in out
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 5000
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "image/png" in o.data]
    assert len(figures) == 2  # the learning curve and the orbital energies
