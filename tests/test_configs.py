"""A short run of every experiment config's small variant, end to end (as CI runs them)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from helm_jax import train
from helm_jax.configs import base
import test_data_readers
import trainlib

EXPERIMENTS = os.path.join(trainlib.ROOT, "experiments")


def load_config(name: str, variant: str):
    """``get_config(variant)`` of ``experiments/<name>.py`` (as config_flags loads it)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _short(c, steps=4):
    c.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps, log_every=2)
    c.model.num_layers = 1  # half the compile time; layer stacking: tests/test_model_backbone.py
    c.data.prefetch = 0
    return c


@pytest.fixture(scope="module")
def embedded_pretrained(tmp_path_factory):
    """omol_pretrain:small on the first embedded structures (labelled into a temp cache)."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["HELM_JAX_CACHE"] = str(cache)
    c = _short(load_config("omol_pretrain", "small"))
    c.data.embedded_limit = 16
    workdir = str(tmp_path_factory.mktemp("omol_small"))
    result = train.train_and_evaluate(c, workdir)
    yield workdir, result
    os.environ.pop("HELM_JAX_CACHE")


# One worker runs every test of the shared pretrained fixture (with ``--dist loadgroup``),
# so the fixture's run happens once, not once per xdist worker.
@pytest.mark.xdist_group("embedded_pretrained")
@pytest.mark.slow
def test_omol_pretrain_small(embedded_pretrained):
    _, result = embedded_pretrained
    assert result["step"] == 4
    assert np.isfinite(result["val"]["h_mae"]) and result["val"]["h_mae"] > 0


@pytest.mark.xdist_group("embedded_pretrained")
@pytest.mark.parametrize("protocol", ["direct", "frozen", "finetune"])
@pytest.mark.slow
def test_energy_transfer_small(embedded_pretrained, protocol, tmp_path):
    workdir, _ = embedded_pretrained
    c = _short(load_config("energy_transfer", f"{protocol},small"))
    c.data.embedded_limit = 16
    if protocol != "direct":
        c.transfer.init_from = workdir
    result = train.train_and_evaluate(c, str(tmp_path))
    assert np.isfinite(result["val"]["energy_ae"])


@pytest.mark.slow
def test_md17_small(tmp_path):
    data = trainlib.label_water(str(tmp_path / "water.h5"))  # HF/def2-SVP stand-in labels
    c = _short(load_config("md17", "ethanol,small"))
    c.data.path = data
    result = train.train_and_evaluate(c, str(tmp_path / "h"))
    assert np.isfinite(result["val"]["h_mae"])


@pytest.mark.slow
def test_md17_energy_small(tmp_path):
    c = _short(load_config("md17", "ethanol,energy,direct,k=2,small"))
    c.data.path = os.path.join(trainlib.ROOT, "tests", "data", "ethanol_train_01_first12.xyz")
    c.data.split.update(train=2, val=1, test=0)
    result = train.train_and_evaluate(c, str(tmp_path))
    assert np.isfinite(result["val"]["energy_ae"]) and np.isfinite(result["val"]["forces_ae"])


@pytest.mark.slow
def test_nabladft_small(tmp_path):
    path = str(tmp_path / "nabla.db")
    labs = [test_data_readers._labels(test_data_readers.WATER, "def2-svp", seed=k) for k in range(4)]
    test_data_readers._write_nabladft(path, labs)
    c = _short(load_config("nabladft", "2k,small"))
    c.data.path = path
    c.data.split.update(train=2, val=1, test=None)
    result = train.train_and_evaluate(c, str(tmp_path / "w"))
    assert np.isfinite(result["val"]["h_mae"])


@pytest.mark.parametrize("variant", ["h_only", "reduced_basis"])
@pytest.mark.slow
def test_qm_targets_small(variant, tmp_path):
    c = _short(load_config("qm_targets", f"{variant},small"))
    c.data.path = trainlib.label_water_qm(str(tmp_path / "water_qm.h5"))
    c.data.split.update(train=5, val=2, test=None)
    workdir = str(tmp_path / "w")
    result = train.train_and_evaluate(c, workdir)
    for name in ("h_mae", "orbital_energy_mae", "gap_mae", "dipole_mae", "polarizability_mae"):
        assert np.isfinite(result["val"][name]), name
    if variant != "reduced_basis":
        return
    # experiments/qm_report.py: the run against both target sets, and the exact def2-SVP
    # labels against the def2-TZVP targets computed here by hand.
    import sys
    sys.path.insert(0, EXPERIMENTS)
    import qm_report
    rows = qm_report.report([workdir], str(tmp_path / "report"), which="latest")
    assert [(r["model"], r["targets"]) for r in rows] == [
        (c.name, "reference"), (c.name, "large_basis"),
        ("def2-SVP label H (exact)", "large_basis")]
    # The run's own test metrics are against the large-basis targets.
    large = rows[1]
    assert large["dipole_mae_mdebye"] == pytest.approx(
        result["test"]["dipole_mae"] * qm_report.AU_DEBYE * 1e3, rel=1e-6)
    from helm_jax.data import readers
    test = [readers.open_dataset(c.data.path)[int(i)] for i in
            json.load(open(os.path.join(workdir, "splits.json")))["test"]]
    dip = np.mean([np.linalg.norm(r.extras["dipole"] - r.extras["targets_dipole"]) for r in test])
    n = 5 + c.qm.n_virtual  # water: 5 occupied orbitals
    orb = np.mean([np.abs(r.extras["mo_energy"][:n] - r.extras["targets_mo_energy"][:n])
                   for r in test])
    assert rows[2]["dipole_mae_mdebye"] == pytest.approx(dip * qm_report.AU_DEBYE * 1e3,
                                                         rel=1e-9)
    assert rows[2]["orbital_energy_mae_mev"] == pytest.approx(orb * qm_report.HARTREE_MEV,
                                                              rel=1e-9)
    assert dip > 1e-3  # def2-SVP and def2-TZVP dipoles differ: the comparison is not vacuous


@pytest.mark.parametrize("name,variant,match", [
    ("md17", "ethanl", "unknown variant word 'ethanl'.*valid: .*ethanol, "),
    ("md17", "ethanol,uracil", "'ethanol' and 'uracil'.*both molecule choices"),
    ("md17", "ethanol,frozen", "names a protocol or k without 'energy'"),
    ("md17", "ethanol,energy,k=many", "k='many' is not a int"),
    ("md17", "ethanol,energy,n=3", "unknown variant key 'n'.*k=<int>"),
    ("omol_pretrain", "smal", "unknown variant word 'smal'.*valid: curve, open_shell, small"),
    ("energy_transfer", "frozen,finetune", "both protocol choices"),
    ("nabladft", "3k", "valid: 10k, 2k, 5k, small"),
    ("qm_targets", "h_only,small,extra", "unknown variant word 'extra'"),
])
def test_variants_are_parsed_strictly(name, variant, match):
    with pytest.raises(ValueError, match=match):
        load_config(name, variant)


def test_variant_choices_and_defaults():
    c = load_config("md17", "uracil,energy,finetune,k=25")
    assert (c.name, c.transfer.protocol, c.data.split.train) == (
        "md17_uracil_finetune_k25", "finetune", 25)
    assert load_config("md17", "").name == "md17_ethanol"
    from helm_jax.configs import md17  # the package and the command-line handle agree
    assert md17.get_config("malonaldehyde,curve").to_dict() == load_config(
        "md17", "malonaldehyde,curve").to_dict()


def test_converge_variant_decays_on_a_cosine_over_its_budget_and_keeps_its_checkpoints():
    from helm_jax import optim
    c = load_config("md17", "ethanol,converge")
    n = c.train.num_steps
    lr = optim._schedule(c.optim, n)
    assert (c.data.split.train, c.data.split.val, c.model.init_scale) == (900, 100, 1 / 3)
    assert float(lr(1)) == pytest.approx(1e-3)
    assert float(lr(n // 2)) == pytest.approx(0.5 * (1e-3 + 1e-5), rel=1e-4)
    assert float(lr(n)) == pytest.approx(1e-5)
    assert c.train.keep_checkpoints * c.train.checkpoint_every >= n  # every evaluated step


def test_a_saved_config_is_completed_with_defaults_and_legacy_values():
    from helm_jax import configs
    from helm_jax.configs import md17
    c = md17.get_config("ethanol,curve")
    saved = json.loads(c.to_json_best_effort())
    assert configs.complete(saved) == c  # a current config comes back unchanged
    del saved["heads"]["label_scale"], saved["data"]["node_reference"], saved["train"]
    old = configs.complete(saved)  # a checkpoint written before these fields existed
    assert (old.heads.label_scale, old.data.node_reference) == ("none", "standardize")
    assert old.train.num_steps == base.get_config().train.num_steps  # the base default
    assert old.model.channels == 32 and old.optim.learning_rate == 1e-3  # saved values kept


def test_backbone_fields_come_only_from_the_config():
    from helm_jax.model import backbone
    model = base.get_config().model
    assert backbone.HELMBackbone.from_config(model).channels == model.channels
    del model["remat"]
    model.typo = 1
    with pytest.raises(TypeError, match=r"unknown fields \['typo'\], missing fields \['remat'\]"):
        backbone.HELMBackbone.from_config(model)


def test_periodic_small(tmp_path, monkeypatch):
    """periodic:small end to end as CI runs it: the embedded h-BN cells labelled by PySCF-PBC
    into a fresh cache, a few steps on real-space blocks and mesh bands, then the test
    cell's band errors on and off the mesh and its band plot."""
    monkeypatch.setenv("HELM_JAX_CACHE", str(tmp_path / "cache"))
    c = _short(load_config("periodic", "small"))
    workdir = str(tmp_path / "w")
    result = train.train_and_evaluate(c, workdir)
    assert result["step"] == 4
    for name in ("hamiltonian_mae", "band_energy_mae"):
        assert np.isfinite(result["test"][name]) and result["test"][name] > 0, name
