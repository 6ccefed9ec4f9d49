"""Evaluation metrics: oracle values for the reference H, exact shifts, per-pair MAE by hand,
training splits, and the evaluation of a checkpoint (library and command line)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import predictlib
import trainlib
from helm_jax import evaluate, hamiltonian_metrics, pyscf_metrics, train
from helm_jax.data import readers
from helm_jax.predict import Predictor


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return predictlib.shared_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def water(shared):
    return shared[0]


@pytest.fixture(scope="module")
def workdir(shared):
    return shared[1]


@pytest.fixture(scope="module")
def reader(water):
    return readers.open_dataset(water)


def test_level_of_theory_comes_from_the_file_with_overrides(water):
    level = pyscf_metrics.level_of_theory(water)
    assert (level.method, level.basis, level.ecp, level.conv_tol) == ("HF", "def2-svp", "",
                                                                      1e-9)
    assert pyscf_metrics.level_of_theory(water, method="pbe", grid_level=None).method == "pbe"


def test_reference_h_is_an_oracle_zero_error_psi_100_and_scf_in_two_cycles(water, reader):
    level = pyscf_metrics.level_of_theory(water)
    records = [reader[i] for i in (0, 5)]
    report = evaluate.evaluate_predictions([(r, r.fock) for r in records], level)
    for row in report.rows:
        for key in ("h_mae_ueh", "h_mae_diag_ueh", "h_mae_offdiag_ueh", "eps_occ_mae_meV",
                    "homo_err_meV", "lumo_err_meV", "gap_err_meV"):
            assert row[key] == 0.0, key
        assert abs(row["energy_err_meV"]) < 1e-6  # same density; PySCF sums in any order
        assert row["psi_pct"] == pytest.approx(100.0, abs=1e-10)
        assert abs(row["ref_density_vs_label_meV"]) < 1e-3  # level matches the labels
        assert row["scf_cycles_pred"] <= 2 < row["scf_cycles_minao"]
        assert row["scf_same_energy"] and abs(row["scf_energy_diff_ueh"]) < 1.0
    summary = evaluate.summarize(report)
    assert summary["n_molecules"] == 2 and summary["scf_cycles_saved_pct"] > 50
    assert summary["scf_same_energy_pct"] == 100.0 and summary["energy_within_30meV_pct"] == 100
    assert set(summary["element_pairs"]) == {"H", "O", "H-H", "H-O"}
    assert all(v["mae_ueh"] == 0.0 for v in summary["element_pairs"].values())


def test_adding_c_times_s_shifts_every_orbital_energy_by_c(water, reader):
    """``(H + cS) C = S C (e + c)``: same orbitals and density, energies shifted by c."""
    rec = reader[2]
    c = 1e-3
    pred = rec.fock + c * rec.overlap
    row, extras = evaluate.molecule_row(rec, pred, pyscf_metrics.level_of_theory(water), scf=False)
    mev = c * pyscf_metrics.MEV
    assert row["eps_occ_mae_meV"] == pytest.approx(mev, rel=1e-8)
    assert row["homo_err_meV"] == pytest.approx(mev, rel=1e-8)
    assert row["lumo_err_meV"] == pytest.approx(mev, rel=1e-8)
    assert abs(row["gap_err_meV"]) < 1e-6 * mev
    assert row["psi_pct"] == pytest.approx(100.0, abs=1e-8)
    assert abs(row["energy_err_meV"]) < 1e-6  # the density does not change
    assert row["h_mae_ueh"] == pytest.approx(c * np.abs(rec.overlap).mean() * 1e6, rel=1e-10)
    np.testing.assert_allclose(extras["eps_pred"] - extras["eps_ref"], c, rtol=1e-8)
    assert len(extras["eps_ref"]) == 6  # 5 occupied orbitals and the LUMO


def test_orbitals_match_scipy_and_psi_drops_for_a_rotated_h(reader):
    import scipy.linalg
    rec = reader[1]
    e, c = pyscf_metrics.orbitals(rec.fock, rec.overlap)
    np.testing.assert_allclose(e, scipy.linalg.eigh(rec.fock, rec.overlap, eigvals_only=True),
                               atol=1e-10)
    np.testing.assert_allclose(c.T @ rec.overlap @ c, np.eye(24), atol=1e-10)
    noise = np.random.default_rng(0).normal(size=(24, 24)) * 0.05
    out = pyscf_metrics.orbital_errors(rec.fock + noise + noise.T, rec.fock, rec.overlap, 5)
    assert 0.0 < out["psi"] < 100.0 and out["eps_occ_mae"] > 0


def test_element_pair_errors_by_hand(reader):
    rec = reader[0]  # O, H, H in def2-SVP: 14 + 5 + 5 AOs
    pred = rec.fock.copy()
    pred[0, 14] += 2e-3
    pred[14, 0] += 2e-3  # one O-H entry and its transpose
    pred[1, 1] -= 1e-3  # one on-site O entry
    pairs = hamiltonian_metrics.element_pair_errors(pred, rec.fock, rec.elements, "def2-svp", None)
    assert {k: n for k, (_, n) in pairs.items()} == {"O": 196, "H": 50, "H-H": 50, "H-O": 280}
    assert pairs["H-O"][0] == pytest.approx(4e-3) and pairs["O"][0] == pytest.approx(1e-3)
    assert pairs["H"][0] == 0 and pairs["H-H"][0] == 0


def test_splits_are_the_training_splits(water, tmp_path):
    config = trainlib.tiny_config(water)
    data = train.load_data(config)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(
            evaluate.split_indices(config, data.reader, split), data.splits[split])
    config.data.split_seed = 7
    workdir = str(tmp_path / "run")
    saved = train.load_data(config, workdir).splits  # writes splits.json
    config.data.split_seed = 0  # splits.json of the run wins over a recomputation
    got = evaluate.split_indices(config, data.reader, "test",
                                 os.path.join(workdir, "checkpoints", "best"))
    np.testing.assert_array_equal(got, saved["test"])
    assert len(evaluate.split_indices(config, data.reader, "all")) == 8


def test_evaluate_checkpoint_writes_metrics_csv_and_plots(workdir, reader, tmp_path):
    out = str(tmp_path / "eval")
    summary = evaluate.evaluate_checkpoint(workdir, split="val", out=out, progress=False)
    assert sorted(os.listdir(out)) == ["h_mae_pairs.png", "h_parity.png", "metrics.json",
                                       "molecules.csv", "orbital_errors.png"]
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    with open(os.path.join(out, "molecules.csv")) as f:
        rows = list(csv.DictReader(f))
    assert saved["n_molecules"] == len(rows) == 2 and saved["split"] == "val"
    assert saved["level_of_theory"]["method"] == "HF"
    for key in ("h_mae_ueh", "psi_pct", "scf_cycles_pred", "scf_cycles_minao"):
        assert saved[key] == pytest.approx(np.mean([float(r[key]) for r in rows]), rel=1e-12)
    assert saved["scf_same_energy_pct"] == 100.0
    # Independent recomputation of the H MAE from the predictor.
    with open(os.path.join(workdir, "splits.json")) as f:
        val = json.load(f)["val"]
    predictor = Predictor.from_checkpoint(workdir)
    preds = predictor.predict_hamiltonian([reader[i] for i in val])
    mae = np.mean([hamiltonian_metrics.hamiltonian_errors(h, reader[i].fock, reader[i].elements,
                                              "def2-svp", None)["h_mae"]
                   for h, i in zip(preds, val)])
    assert summary["h_mae_ueh"] == pytest.approx(mae * 1e6, rel=1e-6)
    assert 0 < summary["psi_pct"] < 100
    text = evaluate.format_summary(summary)
    assert "H MAE" in text and "SCF cycles saved" in text


def test_evaluate_command_line(workdir, water, tmp_path):
    out = str(tmp_path / "eval")
    result = subprocess.run(
        [sys.executable, os.path.join(trainlib.ROOT, "experiments", "evaluate.py"),
         f"--checkpoint={workdir}", "--split=all", f"--data={water}", f"--out={out}",
         "--max_molecules=1", "--noscf", "--noenergy"],
        capture_output=True, text=True, cwd=trainlib.ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "H MAE" in result.stdout and "SCF cycles" not in result.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["n_molecules"] == 1 and saved["data"] == water and saved["h_mae_ueh"] > 0
