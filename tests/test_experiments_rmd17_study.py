"""experiments/rmd17_study.py end to end at a tiny size: pretraining, the three protocols,
test errors on rMD17 test frames, resume, table and plot."""

import json
import os
import shutil

import numpy as np
import pytest

import trainlib
from helm_jax import units
from helm_jax.data import labelling, readers

DATA = os.path.join(trainlib.ROOT, "tests", "data")


def _study_module():
    import sys
    sys.path.insert(0, os.path.join(trainlib.ROOT, "experiments"))
    import rmd17_study
    return rmd17_study


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rmd17")
    shutil.copy(os.path.join(DATA, "ethanol_train_01_first12.xyz"), root / "ethanol_train_01.xyz")
    shutil.copy(os.path.join(DATA, "ethanol_test_01_first4.xyz"), root / "ethanol_test_01.xyz")
    labels = str(root / "ethanol_labels.h5")
    labelling.label_file(str(root / "ethanol_train_01.xyz"), labels,
                         labelling.LevelOfTheory(method="HF", basis="def2-svp"), limit=4,
                         progress=False)
    return str(root), labels


@pytest.mark.slow
def test_study_runs_resumes_and_reports(study_inputs, tmp_path):
    study = _study_module()
    rmd17, labels = study_inputs
    kw = dict(molecule="ethanol", rmd17=rmd17, labels=labels, workdir=str(tmp_path), ks=[2],
              protocols=["frozen"], seeds=[1], n_test=4, small=True,
              pretrain_steps=3, energy_steps=3)
    table = study.run_study(**kw)
    root = tmp_path / "ethanol"
    with open(root / "results.json") as f:
        results = json.load(f)
    assert len(results["runs"]) == 1 and results["pretrain"]["step"] == 3
    for r in results["runs"]:
        assert r["n_test"] == 4 and r["steps"] == 3
        assert np.isfinite(r["energy_mae_mev"]) and r["energy_mae_mev"] > 0
        assert np.isfinite(r["forces_mae_mev_a"]) and r["forces_mae_mev_a"] > 0
    assert set(table) == {"frozen"}  # several protocols: test_study_table_and_plot
    assert (root / "error_vs_k.png").stat().st_size > 10_000
    assert "| frozen |" in (root / "results.md").read_text()

    # The frozen run kept the pretrained backbone bit for bit (finetune: tests/test_train.py).
    from helm_jax import checkpoint
    pre = checkpoint.load_model(str(root / "pretrain"), which="best").params["backbone"]
    assert trainlib.max_diff(trainlib.final_params(str(root / "frozen_k2_seed1"))["backbone"],
                             pre) == 0.0

    # The reported test error is the MAE of the best checkpoint's predictions.
    from helm_jax.predict import Predictor
    run = root / "frozen_k2_seed1"
    test = readers.open_dataset(os.path.join(rmd17, "ethanol_test_01.xyz"))
    energies, forces = Predictor.from_checkpoint(str(run)).energy_and_forces(
        [test[i] for i in range(4)])
    ev = units.HARTREE_EV
    reported = json.loads((run / "result.json").read_text())
    assert reported["energy_mae_mev"] == pytest.approx(1e3 * np.mean(
        [abs(e - test[i].energy * ev) for i, e in enumerate(energies)]), rel=1e-6)
    assert reported["forces_mae_mev_a"] == pytest.approx(1e3 * np.mean(
        [np.abs(f - test[i].forces * ev).mean() for i, f in enumerate(forces)]), rel=1e-6)

    # A second invocation reuses every finished run: nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/result.json")}
    assert study.run_study(**kw) == table
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/result.json")} == stamps


def test_study_table_and_plot(tmp_path):
    """Mean and standard deviation over seeds, the markdown table and the plot."""
    study = _study_module()
    rows = [{"protocol": p, "k": k, "seed": s, "energy_mae_mev": e, "forces_mae_mev_a": 2 * e}
            for p, base in (("direct", 40.0), ("finetune", 20.0)) for k in (25, 50)
            for s, e in enumerate((base / k * 25, base / k * 25 + 2.0))]
    table = study.summarize(rows)
    assert table["direct"]["25"] == {"energy_mean": 41.0, "energy_std": 1.0,
                                     "forces_mean": 82.0, "forces_std": 2.0, "seeds": 2}
    assert table["finetune"]["50"]["energy_mean"] == pytest.approx(11.0)
    md = study.markdown(table, [25, 50], "ethanol")
    assert "| direct | 41.0 +- 1.0 / 82.0 +- 2.0 | 21.0 +- 1.0 / 42.0 +- 2.0 |" in md
    study.plot(table, [25, 50], "ethanol", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000
