"""Tests of geometry reading/validation and the PySCF labeller (data_prep.label)."""

import json
import os
import signal
import subprocess
import sys
import time

os.environ["OMP_NUM_THREADS"] = "1"  # pylint: disable=wrong-import-position

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data_prep import check_rmd17  # pylint: disable=wrong-import-position
from helm_jax.data import labelling  # pylint: disable=wrong-import-position
from helm_jax.data import geometry, h5format  # pylint: disable=wrong-import-position

DATA = os.path.join(ROOT, "tests", "data")
WATER = os.path.join(DATA, "water_frames.xyz")  # 8 distorted water molecules
ETHANOL = os.path.join(DATA, "ethanol_train_01_first12.xyz")  # rMD17 frames 0-11
HF_STO3G = labelling.LevelOfTheory(method="HF", basis="sto-3g", conv_tol=1e-10)
PBE_SVP = labelling.LevelOfTheory(method="pbe", basis="def2-svp", grid_level=1, conv_tol=1e-9)
WATER_O_H_H = [[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]]


@pytest.fixture(autouse=True, name="one_thread")
def fixture_one_thread():
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)


def _assert_same_files(a, b):
    """Both files hold the same structures with the same arrays and attrs."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa:
            assert sorted(fa[key].keys()) == sorted(fb[key].keys())
            for name in fa[key]:
                np.testing.assert_allclose(fa[key][name][()], fb[key][name][()], rtol=0, atol=1e-10)
            assert dict(fa[key].attrs) == dict(fb[key].attrs)


def test_read_xyz_header_charge_multiplicity_and_defaults(tmp_path):
    structures = geometry.read_structures(WATER)
    assert len(structures) == 8 and structures[3].source == "water_frames.xyz:3"
    assert structures[0].elements.tolist() == [8, 1, 1] and structures[0].spin == 0
    path = tmp_path / "ions.xyz"
    path.write_text("2\ncharge=-1 multiplicity=1\nO 0 0 0\nH 0 0 0.97\n"
                    "2\nspin=1\nO 0 0 0\nH 0 0 0.97\n2\n\nO 0 0 0\nH 0 0 0.97\n")
    ions = geometry.read_structures(str(path), charge=1, spin=None)
    assert [(s.charge, s.spin) for s in ions] == [(-1, 0), (1, 1), (1, 0)]


def test_read_ase_db(tmp_path):
    import ase  # pylint: disable=import-outside-toplevel
    import ase.db  # pylint: disable=import-outside-toplevel

    db = ase.db.connect(str(tmp_path / "w.db"))
    db.write(ase.Atoms("OHH", positions=WATER_O_H_H))
    hydroxide = ase.Atoms("OH", positions=WATER_O_H_H[:2])
    hydroxide.set_initial_charges([-1.0, 0.0])
    db.write(hydroxide)
    db.write(ase.Atoms("OH", positions=WATER_O_H_H[:2]), multiplicity=2)
    s = geometry.read_structures(str(tmp_path / "w.db"), charge=0)
    assert [(x.charge, x.spin) for x in s] == [(0, 0), (-1, 0), (0, 1)]
    assert s[1].source == "w.db:1"
    np.testing.assert_allclose(s[0].coords, WATER_O_H_H)


def test_validation_errors():
    ok = np.array(WATER_O_H_H)
    assert geometry.validate_structure([8, 1, 1], ok)[1:] == (10, 0)
    assert geometry.validate_structure(["O", "h", "H"], ok, charge=1)[1:] == (9, 1)
    nan = ok.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite coordinate .* atom 1, axis z"):
        geometry.validate_structure([8, 1, 1], nan)
    close = ok.copy()
    close[2] = close[0] + [0.05, 0, 0]
    with pytest.raises(ValueError, match=r"atoms 0 and 2 are 0.0500 A apart"):
        geometry.validate_structure([8, 1, 1], close)
    with pytest.raises(ValueError, match="atom 1: unknown element symbol 'Xx'"):
        geometry.validate_structure(["O", "Xx", "H"], ok)
    with pytest.raises(ValueError, match="atom 0: unknown atomic number 0"):
        geometry.validate_structure([0, 1, 1], ok)
    with pytest.raises(ValueError, match="unknown atomic number 200"):
        geometry.validate_structure([8, 200, 1], ok)
    with pytest.raises(ValueError, match="9 electrons, which cannot have spin 2S=0"):
        geometry.validate_structure([8, 1, 1], ok, charge=1, spin=0)
    with pytest.raises(ValueError, match=r"shape \[n_atoms, 3\] = \[3, 3\] .* got \[2, 3\]"):
        geometry.validate_structure([8, 1, 1], ok[:2])
    with pytest.raises(ValueError, match="does not cover element Fm"):
        geometry.validate_structure([100, 1, 1], ok, basis="def2-svp", ecp="def2-svp")


def test_ecp_electron_count():
    hi = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.61]]
    assert geometry.validate_structure([53, 1], hi)[1] == 54  # all-electron
    assert geometry.validate_structure([53, 1], hi, basis="def2-svp", ecp="def2-svp")[1] == 26
    mol = geometry.build_mole(geometry.Structure(np.array([53, 1]), np.array(hi), 0, 0, "hi"),
                              "def2-svp", "def2-svp")
    assert mol.nelectron == 26


def test_label_structure_matches_pyscf():
    from pyscf import gto, scf  # pylint: disable=import-outside-toplevel

    s = geometry.read_structures(WATER)[0]
    lab = labelling.label_structure(s, HF_STO3G, forces=True)
    mol = gto.M(atom=[[int(z), tuple(x)] for z, x in zip(s.elements, s.coords)], basis="sto-3g")
    mf = scf.RHF(mol).set(conv_tol=1e-10)
    mf.kernel()
    assert lab.converged and lab.n_electrons == 10
    assert abs(lab.energy - mf.e_tot) < 1e-9
    np.testing.assert_allclose(lab.overlap, mol.intor("int1e_ovlp"), atol=1e-14)
    np.testing.assert_allclose(lab.fock, lab.fock.T, atol=1e-12)
    np.testing.assert_allclose(lab.fock, mf.get_fock(), atol=1e-6)
    grad = mf.nuc_grad_method().kernel()  # Eh/bohr
    np.testing.assert_allclose(lab.forces, -grad / 0.52917721092, atol=1e-5)
    np.testing.assert_allclose(lab.forces.sum(0), 0.0, atol=1e-6)


def test_label_file_writes_format_and_checks_theory(tmp_path):
    out = str(tmp_path / "w.h5")
    summary = labelling.label_file(WATER, out, HF_STO3G, limit=3, progress=False)
    assert summary["labelled"] == 3 and summary["in_file"] == 3
    assert not os.path.exists(out + ".parts")
    with h5format.H5Dataset(out) as ds:
        assert ds.attrs["method"] == "HF" and ds.attrs["basis"] == "sto-3g"
        assert ds.attrs["format"] == "helm_jax.h5/v1" and ds.attrs["ecp"] == ""
        assert json.loads(ds.attrs["units"])["coords"] == "angstrom"
        assert {"pyscf_version", "helm_jax_version", "numpy_version", "h5py_version"} <= set(ds.attrs)
        structures = geometry.read_structures(WATER)
        for i in range(3):
            rec = ds[i]
            mol = geometry.build_mole(structures[i], "sto-3g")
            # PySCF's own S is symmetric only to 1e-16; the file mirrors the upper triangle.
            np.testing.assert_allclose(rec.overlap, mol.intor("int1e_ovlp"), rtol=0, atol=1e-15)
            np.testing.assert_array_equal(rec.coords, structures[i].coords)
            assert rec.forces is None
    with h5py.File(out, "r") as f:
        g = f["0000002"].attrs
        assert g["source"] == "water_frames.xyz:2" and g["complete"] and g["n_electrons"] == 10
    with pytest.raises(ValueError, match=r"different settings .*basis='sto-3g' there, 'def2-svp' here"):
        labelling.label_file(WATER, out, PBE_SVP, limit=4, progress=False)
    with pytest.raises(ValueError, match="forces=False there, True here"):
        labelling.label_file(WATER, out, HF_STO3G, limit=4, forces=True, progress=False)
    more = labelling.label_file(WATER, out, HF_STO3G, start=2, limit=3, progress=False)
    assert (more["skipped"], more["labelled"], more["in_file"]) == (1, 2, 5)


def test_unconverged_recorded_and_excluded(tmp_path):
    out = str(tmp_path / "u.h5")
    labelling.label_file(WATER, out, HF_STO3G, limit=2, progress=False)
    summary = labelling.label_file(WATER, out, HF_STO3G, start=2, limit=1, max_cycle=1,
                               progress=False)
    assert summary["unconverged_new"] == 1 and summary["unconverged_in_file"] == 1
    with h5format.H5Dataset(out) as ds:
        assert [ds[i].converged for i in range(3)] == [True, True, False]
        np.testing.assert_array_equal(ds.converged_indices(), [0, 1])


def test_rejects_bad_parity_invalid_and_corrupt(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("3\nmultiplicity=2\nO 0 0 0.117\nH 0 0.757 -0.469\nH 0 -0.757 -0.469\n"
                    "3\n\nO 0 0 0.117\nH 0 0.757 -0.469\nH 0 0.757 -0.469\n")
    with pytest.raises(ValueError, match="(?s)2 invalid structure.*bad.xyz:0: .*cannot have spin 2S=1.*bad.xyz:1: atoms 1 and 2"):
        labelling.label_file(str(path), str(tmp_path / "o.h5"), HF_STO3G, progress=False)
    with pytest.raises(ValueError, match="10 electrons, which cannot have spin 2S=1"):
        labelling.label_structure(geometry.read_structures(str(path))[0], HF_STO3G)
    corrupt = tmp_path / "c.h5"
    corrupt.write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError, match="not a readable HDF5 file.*Move .* away"):
        labelling.label_file(WATER, str(corrupt), HF_STO3G, progress=False)


def test_spawn_pool_equals_in_process(tmp_path):
    labelling.label_file(WATER, str(tmp_path / "a.h5"), HF_STO3G, limit=3, progress=False)
    labelling.label_file(WATER, str(tmp_path / "b.h5"), HF_STO3G, limit=3, workers=2, threads=1,
                     progress=False)
    _assert_same_files(str(tmp_path / "a.h5"), str(tmp_path / "b.h5"))


@pytest.mark.slow
def test_kill_9_and_resume_equals_uninterrupted(tmp_path):
    flags = ["--input", WATER, "--xc", "pbe", "--basis", "def2-svp", "--grid_level", "1",
             "--conv_tol", "1e-9", "--forces", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = str(tmp_path / "killed.h5")
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.label", "--out", out, *flags],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = out + ".parts"
    deadline = time.time() + 60
    while len(labelling._finished_parts(parts)) < 2 and proc.poll() is None:  # pylint: disable=protected-access
        assert time.time() < deadline, "labeller produced no parts"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "labelling finished before it could be killed"
    n_done = len(labelling._finished_parts(parts))  # pylint: disable=protected-access
    assert 2 <= n_done < 8 and not os.path.exists(out)
    with open(os.path.join(parts, ".0000007.h5.tmp.1"), "wb") as fh:  # a half-written part
        fh.write(b"\x89HDF partial")
    stale_out = str(tmp_path / ".killed.h5.tmp.1")
    with open(stale_out, "wb") as fh:  # a half-assembled output
        fh.write(b"partial")
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "label.py"),
                              "--out", out, *flags], cwd=str(tmp_path), env=env,
                             capture_output=True, text=True, check=True)
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == n_done and summary["labelled"] == 8 - n_done
    assert summary["in_file"] == 8 and summary["unconverged_in_file"] == 0
    assert not os.path.exists(parts) and not os.path.exists(stale_out)
    reference = str(tmp_path / "reference.h5")
    labelling.label_file(WATER, reference, PBE_SVP, forces=True, progress=False)
    _assert_same_files(out, reference)


@pytest.mark.slow
def test_rmd17_frame_agrees_with_orca():
    # Grid level 3 (not 5): the level-5 version takes ~21 s on one loaded core.
    level = labelling.LevelOfTheory(method="pbe", basis="def2-svp", grid_level=3, conv_tol=1e-9)
    r = check_rmd17.compare(ETHANOL, 1, level, verbose=False)
    assert abs(r["energy_diff_mev"][0]) < 15.0
    assert r["force_mae_mev_a"][0] < 3.0


def test_rejected_input_leaves_no_state_and_a_corrected_rerun_works(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\n\nO 0 0 0.117\nH 0 0.757 -0.469\nH 0 0.757 -0.469\n")
    out = str(tmp_path / "o.h5")
    with pytest.raises(ValueError, match="invalid structure"):
        labelling.label_file(str(bad), out, HF_STO3G, progress=False)
    assert not os.path.exists(out + ".parts")  # nothing recorded for rejected input
    with open(WATER) as f:
        bad.write_text("".join(f.readlines()[:5]))  # the first water frame: valid
    summary = labelling.label_file(str(bad), out, PBE_SVP, progress=False)  # other flags
    assert summary["labelled"] == 1 and summary["in_file"] == 1


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    frames = tmp_path / "many.xyz"
    frames.write_text(open(WATER).read() * 6)  # 48 frames: the pool is busy when killed
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.label", "--input", str(frames), "--out",
         str(tmp_path / "k.h5"), "--xc", "pbe", "--basis", "def2-svp", "--grid_level", "1",
         "--workers", "2", "--threads", "1", "--no_progress"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(labelling._finished_parts(str(tmp_path / "k.h5.parts"))) < 2:  # pylint: disable=protected-access
        assert proc.poll() is None and time.time() < deadline, "the pool produced no parts"
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the spawn pool's workers (and its resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [w for w in workers if os.path.exists(f"/proc/{w}")
                 and open(f"/proc/{w}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived their killed parent"
