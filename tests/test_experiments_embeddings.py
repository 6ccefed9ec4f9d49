"""experiments/embeddings.py: per-atom l=0 embeddings, UMAP / PCA projections, files."""

import json
import os
import sys

import numpy as np
import pytest

import predictlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
import embeddings  # noqa: E402

N_FRAMES, N_ATOMS = 8, 24  # the water fixture: 8 frames of 3 atoms


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return predictlib.shared_checkpoint(tmp_path_factory)


def test_environments_name_element_and_bonded_neighbours():
    water = embeddings.environments(np.array([8, 1, 1]), np.array(
        [[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]]))
    assert water == ["O(H2)", "H(O)", "H(O)"]
    methanol = embeddings.environments(np.array([6, 8, 1, 1, 1, 1]), np.array(
        [[-0.047, 0.665, 0.0], [-0.047, -0.756, 0.0], [-1.086, 0.976, 0.0],
         [0.437, 1.080, 0.891], [0.437, 1.080, -0.891], [0.866, -1.080, 0.0]]))
    assert methanol == ["C(H3O)", "O(CH)", "H(C)", "H(C)", "H(C)", "H(O)"]
    assert embeddings.environments(np.array([54]), np.zeros((1, 3))) == ["Xe()"]


def test_pca_is_the_svd_projection():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1, 0.1])
    y = embeddings.pca(x)
    assert y.shape == (50, 2)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(y[:, 0] @ y[:, 1], 0.0, atol=1e-9)  # orthogonal axes
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(y, axis=0), s[:2], rtol=1e-12)
    assert embeddings.pca(np.ones((5, 1))).shape == (5, 2)  # rank < 2: zero column


@pytest.mark.slow
def test_embeddings_do_not_depend_on_batching(setup):
    water, workdir = setup
    structures = embeddings.load_structures(water)
    together = embeddings.extract(workdir, structures)
    alone = embeddings.extract(workdir, structures[3:4])
    assert together["embeddings"].shape == (N_ATOMS, 8)  # tiny_config: 8 channels
    np.testing.assert_array_equal(together["species"], [8, 1, 1] * N_FRAMES)
    np.testing.assert_array_equal(together["structure"], np.repeat(np.arange(N_FRAMES), 3))
    np.testing.assert_allclose(alone["embeddings"], together["embeddings"][9:12], atol=1e-5)
    # Distinct frames give distinct embeddings; the two H of a frame differ by geometry only.
    assert np.abs(together["embeddings"][0] - together["embeddings"][3]).max() > 1e-6


@pytest.mark.slow
def test_run_writes_coordinates_plots_and_summary_with_umap_and_pca(setup, tmp_path,
                                                                   monkeypatch):
    water, workdir = setup
    out = tmp_path / "umap"
    results = embeddings.run({"a": workdir, "b": workdir}, data=water, out=str(out),
                             projection="auto")
    for label in ("a", "b"):
        r = results[label]
        assert r["projection"] == "umap"
        assert r["coords"].shape == (N_ATOMS, 2) and np.all(np.isfinite(r["coords"]))
        saved = np.load(out / f"{label}.npz")
        np.testing.assert_array_equal(saved["coords"], r["coords"])
        assert saved["embeddings"].shape == (N_ATOMS, 8)
        assert str(saved["projection"]) == "umap"
        assert list(saved["environment"][:3]) == ["O(H2)", "H(O)", "H(O)"]
        rows = (out / f"{label}.csv").read_text().splitlines()
        assert len(rows) == N_ATOMS + 1 and rows[1].split(",")[:4] == ["0", "0", "O", "O(H2)"]
        for png in (f"{label}_element.png", f"{label}_environment.png"):
            assert (out / png).stat().st_size > 5000
    assert (out / "embeddings.png").stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_structures"] == N_FRAMES
    assert summary["checkpoints"]["a"]["n_atoms"] == N_ATOMS
    assert summary["checkpoints"]["a"]["projection"] == "umap"
    # One molecule only: no atom has another molecule to be compared with.
    assert np.isnan(summary["checkpoints"]["a"]["knn_environment_accuracy"])

    # Without umap-learn, "auto" falls back to PCA with the same shapes and says so.
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    results = embeddings.run({"a": workdir}, data=water, out=str(tmp_path / "pca"))
    assert results["a"]["projection"] == "pca"
    assert results["a"]["coords"].shape == (N_ATOMS, 2)
    assert json.loads((tmp_path / "pca" / "summary.json").read_text())[
        "checkpoints"]["a"]["projection"] == "pca"
    np.testing.assert_allclose(
        results["a"]["coords"], embeddings.pca(embeddings.standardize(results["a"]["embeddings"])))
    with pytest.raises(ImportError):
        embeddings.project(np.zeros((30, 4)), "umap")


def test_knn_accuracy_counts_other_molecules_only():
    x = np.array([[0.0], [0.1], [5.0], [5.1], [0.04], [5.07]])
    env = ["A", "B", "A", "B", "A", "B"]
    structure = np.array([0, 0, 1, 1, 2, 2])
    names = ["m0", "m1", "m2"]
    # Nearest atom of another molecule: 0->4 (A, right), 1->4 (A, wrong), 2->5 (B, wrong),
    # 3->5 (B, right), 4->0 (A, right), 5->3 (B, right); the same-molecule atom never counts.
    acc = embeddings.environment_knn_accuracy(x, env, structure, names, k=1)
    assert acc == pytest.approx(4 / 6)
    # Conformers of one molecule do not count as neighbours.
    assert np.isnan(embeddings.environment_knn_accuracy(x, env, structure, ["m"] * 3, k=1))
