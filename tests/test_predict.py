"""Inference from a checkpoint: H for every input type, bounded compilations, SCF guesses,
energies/forces, NVE dynamics through the ASE calculator, and the prediction file writer."""

import dataclasses
import os

import ase
import ase.io
import ase.units
import h5py
import jax
import numpy as np
import pytest
from ase.md.verlet import VelocityVerlet
from pyscf import gto, scf

import predictlib
import trainlib
from helm_jax import basis, checkpoint, predict, pyscf_metrics
from helm_jax.ase_calculator import HELMCalculator
from helm_jax.data import readers
from helm_jax.data.records import Record
from helm_jax.units import HARTREE_EV


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    water, workdir = predictlib.shared_checkpoint(tmp_path_factory)
    loaded = checkpoint.load_model(workdir)
    return predict.Predictor(loaded), loaded, readers.open_dataset(water)


def _mole(record, basis_name="def2-svp", **kw):
    return gto.M(atom=[(int(z), tuple(c)) for z, c in zip(record.elements, record.coords)],
                 basis=basis_name, unit="Angstrom", verbose=0, **kw)


def _random_molecules(n, seed):
    """Random H/O molecules of 2-3 atoms (one size class), atoms at least 0.8 A apart."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        k = int(rng.integers(2, 4))
        xyz = rng.uniform(-1.2, 1.2, size=(k, 3))
        d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1) + 9 * np.eye(k)
        if d.min() > 0.8:
            out.append(ase.Atoms(numbers=rng.choice([1, 8], size=k), positions=xyz))
    return out


def test_h_is_the_same_for_atoms_mole_record_and_batched_calls(setup):
    predictor, _, reader = setup
    before = predictor.num_compilations
    records = [reader[i] for i in range(len(reader))]
    rec = records[0]
    h = predictor.predict_hamiltonian(rec)
    assert h.shape == (24, 24) and np.array_equal(h, h.T)
    atoms = ase.Atoms(numbers=rec.elements, positions=rec.coords)
    np.testing.assert_array_equal(predictor.predict_hamiltonian(atoms), h)
    np.testing.assert_array_equal(predictor.predict_hamiltonian(_mole(rec)), h)
    batched = predictor.predict_hamiltonian(records)
    assert len(batched) == len(records)
    scale = np.abs(h).max()
    np.testing.assert_allclose(batched[0], h, atol=1e-5 * scale)  # other padding
    assert predictor.num_compilations - before <= 2  # k = 1 and k = 8 waters


def test_mole_with_another_basis_ecp_or_element_is_refused(setup):
    predictor, _, reader = setup
    rec = reader[0]
    with pytest.raises(ValueError, match="basis differs.*basis='def2-svp'"):
        predictor.predict_hamiltonian(_mole(rec, "sto-3g"))
    with pytest.raises(ValueError, match="basis differs"):
        predictor.predict_hamiltonian(_mole(rec, "def2-svpd"))
    with pytest.raises(ValueError, match="Cartesian"):
        predictor.predict_hamiltonian(_mole(rec, cart=True))
    with pytest.raises(ValueError, match="Element N"):
        predictor.predict_hamiltonian(gto.M(atom="N 0 0 0; H 0 0 1.0", basis="def2-svp",
                                            verbose=0))
    hi = basis.make_template([1, 53], "def2-svp", "def2-svp")
    atom = "I 0 0 0; H 0 0 1.6"
    predict.check_mole(gto.M(atom=atom, basis="def2-svp", ecp={"I": "def2-svp"}, verbose=0),
                       hi)
    with pytest.raises(ValueError, match="ECP core electrons"):
        predict.check_mole(gto.M(atom=atom, basis="def2-svp", verbose=0), hi)


def test_many_different_molecules_compile_a_few_shapes(setup):
    predictor = setup[0]
    first, second = _random_molecules(40, seed=1), _random_molecules(40, seed=2)
    assert len({(tuple(a.numbers), a.positions.sum()) for a in first + second}) == 80
    before = predictor.num_compilations
    for atoms in first + second:
        h = predictor.predict_hamiltonian(atoms)
        assert np.all(np.isfinite(h))
    assert predictor.num_compilations - before <= 1  # one size class, one molecule: k = 1
    assert (predictor._hamiltonian._cache_size() + predictor._energy_forces._cache_size()
            == predictor.num_compilations)
    many = predictor.predict_hamiltonian(_random_molecules(100, seed=3) + second)
    assert len(many) == 140  # 8 batches of 16 and 12 left over, padded to 16: one shape
    assert predictor.num_compilations - before <= 2
    np.testing.assert_allclose(many[-1], h, atol=1e-5 * np.abs(h).max())


def test_initial_guess_is_a_valid_density_and_scf_reaches_the_minao_energy(setup):
    predictor, _, reader = setup
    mol = _mole(reader[3])
    dm = predictor.initial_guess(mol)
    s = mol.intor_symmetric("int1e_ovlp")
    assert np.trace(dm @ s) == pytest.approx(mol.nelectron, abs=1e-8)
    np.testing.assert_allclose(dm @ s @ dm, 2 * dm, atol=1e-8)  # idempotent (closed shell)
    guess, minao = scf.RHF(mol), scf.RHF(mol)
    e_guess, e_minao = guess.kernel(dm0=dm), minao.kernel()
    assert guess.converged and abs(e_guess - e_minao) < 1e-7
    assert e_minao == pytest.approx(reader[3].energy, abs=1e-7)
    with pytest.raises(ValueError, match="closed-shell"):
        predictor.initial_guess(gto.M(atom="O 0 0 0; H 0 0 1.0", basis="def2-svp", spin=1,
                                      verbose=0))


def test_energy_is_model_plus_reference_and_forces_are_its_gradient(setup):
    predictor, _, reader = setup
    frames = [ase.Atoms(numbers=reader[i].elements, positions=reader[i].coords)
              for i in range(len(reader))]
    energies, forces = predictor.energy_and_forces(frames)
    atoms = frames[2]
    e, f = predictor.energy_and_forces(atoms)
    assert energies[2] == pytest.approx(e, abs=1e-5)
    np.testing.assert_allclose(forces[2], f, atol=1e-5 * np.abs(f).max())
    assert f.shape == (3, 3) and abs(f.sum(0)).max() < 1e-5 * abs(f).max() + 1e-9
    stats = predictor.stats
    try:  # the per-element reference (Eh) is added on the host
        predictor.stats = dataclasses.replace(stats, energy_ref=stats.energy_ref + 1.0)
        assert predictor.energy_and_forces(atoms)[0] == pytest.approx(e + 3 * HARTREE_EV,
                                                                      abs=1e-6)
    finally:
        predictor.stats = stats
    step, numeric = 1e-3, np.zeros((3, 3))
    for i in range(3):
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, k] += sign * step
                shifted.append(predictor.energy_and_forces(a)[0])
            numeric[i, k] = -(shifted[0] - shifted[1]) / (2 * step)
    np.testing.assert_allclose(f, numeric, atol=0.02 * np.abs(f).max())


class _ScaledForces(HELMCalculator):
    """A deliberately wrong calculator: forces 10 % too large."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"] = self.results["forces"] * 1.1


def _nve_drift(calculator, steps=40):
    atoms = ase.io.read(trainlib.WATER_XYZ, index=0)
    atoms.calc = calculator
    thermal = np.sqrt(ase.units.kB * 500.0 / atoms.get_masses())[:, None]  # 500 K
    atoms.set_velocities(np.random.default_rng(0).normal(size=(3, 3)) * thermal)
    md = VelocityVerlet(atoms, timestep=0.25 * ase.units.fs)
    total, potential = [], []
    md.attach(lambda: (total.append(atoms.get_total_energy()),
                       potential.append(atoms.get_potential_energy())), interval=1)
    md.run(steps)
    return np.abs(np.array(total) - total[0]).max(), np.ptp(potential)


def test_nve_md_conserves_energy_and_wrong_forces_do_not(setup):
    predictor = setup[0]
    before = predictor.num_compilations
    drift, span = _nve_drift(HELMCalculator(predictor))
    # The untrained surface is shallow (~0.2 meV over the run) but smooth; exact forces keep
    # the drift ~1e-4 of it, forces 10 % too large drift by ~0.1 of it.
    assert span > 1e-5
    assert drift < 0.01 * span
    wrong_drift, _ = _nve_drift(_ScaledForces(predictor))
    assert wrong_drift > 0.03 * span
    assert predictor.num_compilations - before <= 1  # 80 steps, one program


def test_write_predictions_makes_a_project_h5_file(setup, tmp_path):
    predictor, _, reader = setup
    out = str(tmp_path / "pred.h5")
    assert predict.write_predictions(predictor, trainlib.WATER_XYZ, out) == 8
    data = readers.open_dataset(out)
    assert data.kind == "h5" and data.basis == "def2-svp" and len(data) == 8
    rec = data[4]
    h = predictor.predict_hamiltonian(reader[4])
    np.testing.assert_allclose(rec.fock, h, atol=1e-5 * np.abs(h).max())
    np.testing.assert_allclose(rec.overlap, reader[4].overlap, atol=1e-12)
    e, f = predictor.energy_and_forces(Record(elements=rec.elements, coords=rec.coords))
    assert rec.energy * HARTREE_EV == pytest.approx(e, abs=1e-5)
    np.testing.assert_allclose(rec.forces * HARTREE_EV, f, atol=1e-5 * np.abs(f).max())
    with h5py.File(out) as fh:
        eps = fh["0000004/mo_energy"][()]
    np.testing.assert_allclose(eps, pyscf_metrics.orbitals(rec.fock, rec.overlap)[0], atol=1e-10)
    import scipy.linalg
    np.testing.assert_allclose(eps, scipy.linalg.eigh(rec.fock, rec.overlap, eigvals_only=True),
                               atol=1e-8)


def test_exported_model_predicts_the_same_h_and_energy(setup, tmp_path, tmp_path_factory):
    """checkpoint.export_model: parameters and metadata without the optimiser state; the
    Predictor built from the export gives the checkpoint's H and energy bit for bit, extra
    metadata is kept, and a non-empty target is refused."""
    predictor, loaded, reader = setup
    _, workdir = predictlib.shared_checkpoint(tmp_path_factory)
    out = str(tmp_path / "export")
    step_dir = checkpoint.export_model(workdir, out, test_metrics={"h_mae": 1.5e-4})
    assert os.path.basename(step_dir) == str(loaded.step)
    assert "train_state" not in os.listdir(step_dir)
    exported = checkpoint.load_model(out)
    assert exported.meta["test_metrics"] == {"h_mae": 1.5e-4}
    again = predict.Predictor(exported)
    records = [reader[i] for i in range(2)]
    for a, b in zip(predictor.predict_hamiltonian(records), again.predict_hamiltonian(records)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(predictor.energy_and_forces(records)[0],
                                  again.energy_and_forces(records)[0])
    with pytest.raises(FileExistsError, match="not empty"):
        checkpoint.export_model(out, out)


def test_a_training_checkpoint_loads_its_ema_parameters(setup, tmp_path):
    """A ``latest`` checkpoint stores the raw parameters as ``params`` and the EMA the run
    validates in ``train_state``: load_model (and so evaluation, export and prediction)
    gives the EMA; a checkpoint without one gives ``params``."""
    _, loaded, _ = setup
    ema = jax.tree.map(lambda x: np.asarray(x) * 2.0 + 1.0, loaded.params)
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(7, loaded.params, {"step": 7, "ema": ema}, loaded.meta)
        ckpt.save(8, loaded.params, {"step": 8}, loaded.meta)
    for step, want in ((7, ema), (8, loaded.params)):
        got = checkpoint.load_model(str(tmp_path / "checkpoints" / "latest" / str(step)))
        assert got.step == step
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
