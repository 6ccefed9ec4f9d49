"""The committed rMD17 ethanol model (checkpoints/rmd17_ethanol_pbe_svp) loads from the
repository alone and predicts the PBE/def2-SVP Hamiltonian of ethanol conformers it never
saw (the first two of rMD17's test file) at its documented accuracy, with PySCF as the
oracle: labels computed here, orbital energies and SCF cycles against minao."""

import os

import numpy as np
import pytest

import trainlib
from helm_jax import checkpoint, evaluate, predict
from helm_jax.data import labelling

CKPT = os.path.join(trainlib.ROOT, "checkpoints", "rmd17_ethanol_pbe_svp")
FRAMES = os.path.join(trainlib.ROOT, "tests", "data", "ethanol_test_01_first4.xyz")


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    labels = str(tmp_path_factory.mktemp("ethanol") / "ethanol_test_pbe_svp_df.h5")
    level = labelling.LevelOfTheory(method="pbe", basis="def2-svp", density_fit=True,
                                    grid_level=3, conv_tol=1e-9)
    labelling.label_file(FRAMES, labels, level, limit=2, progress=False)
    return evaluate.evaluate_checkpoint(CKPT, split="all", data=labels, progress=False)


def test_committed_model_loads_with_its_record():
    loaded = checkpoint.load_model(CKPT)
    predictor = predict.Predictor.from_checkpoint(CKPT)
    assert predictor.step == loaded.step > 0
    assert predictor.template.basis.lower() == "def2-svp"
    assert (loaded.config.model.channels, loaded.config.model.l_max) == (32, 4)
    assert loaded.meta["trained_steps"] >= loaded.step
    assert 0 < loaded.meta["test_metrics"]["h_mae_ueh"] < 150


def test_committed_model_predicts_unseen_conformers_at_its_documented_accuracy(summary):
    documented = checkpoint.load_model(CKPT).meta["test_metrics"]
    assert summary["n_molecules"] == 2
    assert summary["h_mae_ueh"] < 1.5 * documented["h_mae_ueh"]
    assert summary["eps_occ_mae_meV"] < 30.0
    assert summary["psi_pct"] > 99.0
    # PySCF from the predicted density: fewer cycles than from minao, the same energy
    assert summary["scf_cycles_ratio"] < 0.85
    assert summary["scf_same_energy_pct"] == 100.0
    assert np.isfinite(summary["energy_mae_meV"]) and summary["energy_mae_meV"] < 50.0
