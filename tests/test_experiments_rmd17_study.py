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


def test_budgets_and_direct_over_finetune_ratios():
    study = _study_module()
    assert study.energy_budget(25, 40, 1000, None, 5000, "finetune") == 1000
    assert study.energy_budget(800, 40, 1000, None, 5000, "direct") == 32_000
    assert study.energy_budget(800, 40, 1000, None, 5000, "direct_matched") == 37_000
    assert study.energy_budget(25, 0, 1000, 250, 1500, "frozen") == 250
    assert study.energy_budget(25, 0, 1000, None, 1500, "direct") is None
    with pytest.raises(ValueError, match="--steps_per_label"):
        study.energy_budget(25, 0, 1000, None, 1500, "direct_matched")
    rows = [{"protocol": p, "k": k, "seed": s, "energy_mae_mev": e, "forces_mae_mev_a": f}
            for p, k, s, e, f in (("direct", 25, 0, 30.0, 60.0), ("finetune", 25, 0, 15.0, 20.0),
                                  ("direct", 25, 1, 40.0, 60.0), ("finetune", 25, 1, 10.0, 30.0),
                                  ("direct", 100, 0, 9.0, 9.0))]  # no finetune partner
    r = study.ratios(rows)
    assert list(r) == ["25"]
    assert r["25"]["energy_mae_mev"] == {"mean": 3.0, "std": 1.0, "seeds": 2}
    assert r["25"]["forces_mae_mev_a"]["mean"] == pytest.approx(2.5)
    assert "| 25 | 3.00 +- 1.00 | 2.50 +- 0.50 |" in study.ratio_markdown(r)
    assert study.ratio_markdown({}) == ""


@pytest.mark.slow
def test_study_from_a_finished_run_with_the_matched_control(study_inputs, tmp_path):
    """--pretrained: the study reuses a finished Hamiltonian run (no pretraining of its own),
    every protocol takes its model settings, and direct_matched trains the pretraining's
    steps on top of its budget."""
    study = _study_module()
    rmd17, labels = study_inputs
    from helm_jax import train
    pre = str(tmp_path / "pre")
    c = study.pretrain_config("ethanol", labels, small=True, steps=4)
    c.model.m_max = 1  # not the study's own setting: the energy runs must follow it
    train.train_and_evaluate(c, pre)
    study.run_study(molecule="ethanol", rmd17=rmd17, labels=None, workdir=str(tmp_path / "s"),
                    ks=[2], protocols=["direct", "finetune"], seeds=[1], n_test=2, small=True,
                    pretrained=pre, steps_per_label=1, min_steps=2, control=True)
    root = tmp_path / "s" / "ethanol"
    assert not (root / "pretrain").exists()
    results = json.loads((root / "results.json").read_text())
    steps = {r["protocol"]: r["steps"] for r in results["runs"]}
    assert steps == {"direct": 2, "finetune": 2, "direct_matched": 2 + 4}
    assert results["pretrain"]["step"] == 4
    assert set(results["direct_over_finetune"]) == {"2"}
    from helm_jax import checkpoint
    for p in ("direct", "finetune", "direct_matched"):
        assert checkpoint.load_model(str(root / f"{p}_k2_seed1")).config.model.m_max == 1
    assert "direct / finetuned" in (root / "results.md").read_text()
    # An exported model (experiments/export_model.py) stands for its run: the same model
    # settings and the run's trained steps for direct_matched.
    exported = str(tmp_path / "exported")
    checkpoint.export_model(pre, exported)
    assert checkpoint.trained_steps(exported) == 4
    study.run_study(molecule="ethanol", rmd17=rmd17, labels=None, workdir=str(tmp_path / "e"),
                    ks=[2], protocols=["finetune"], seeds=[1], n_test=2, small=True,
                    pretrained=exported, steps_per_label=1, min_steps=2, control=True)
    results = json.loads((tmp_path / "e" / "ethanol" / "results.json").read_text())
    assert {r["protocol"]: r["steps"] for r in results["runs"]} == {
        "finetune": 2, "direct_matched": 2 + 4}
