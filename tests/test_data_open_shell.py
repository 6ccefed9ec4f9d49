"""Open-shell (spin-resolved) labels: UKS/UHF labelling, the HDF5 `fock_beta` dataset and the
readers, with PySCF as the oracle (docs/data.md, "Open shells")."""

import dataclasses
import hashlib
import json
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # pylint: disable=wrong-import-position

import h5py
import numpy as np
import pytest
import scipy.linalg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data_prep import label as label_cli  # pylint: disable=wrong-import-position
from data_prep import verify  # pylint: disable=wrong-import-position
from helm_jax import conventions  # pylint: disable=wrong-import-position
from helm_jax.data import embedded, geometry, h5format  # pylint: disable=wrong-import-position
from helm_jax.data import labelling, readers  # pylint: disable=wrong-import-position
from helm_jax.data import reference_targets  # pylint: disable=wrong-import-position
from helm_jax.data.records import DataError  # pylint: disable=wrong-import-position
from helm_jax.units import BOHR_ANGSTROM  # pylint: disable=wrong-import-position

# Frames with their header (charge, spin metadata); the OH radical has none: its spin comes
# from the electron parity (label_file's default spin=None).
FRAMES = [
    ("charge=0 multiplicity=2", "C 0 0 0\nH 1.079 0 0\nH -0.5395 0.9344 0.02\nH -0.5395 -0.9344 0"),
    ("", "O 0 0 0\nH 0 0.05 0.97"),
    ("charge=1 spin=1", "O 0 0 0.117\nH 0 0.757 -0.469\nH 0 -0.757 -0.469"),
    ("charge=-1 spin=0", "O 0 0 0\nH 0 0 0.97"),
]
CHARGE_SPIN = [(0, 1), (0, 1), (1, 1), (-1, 0)]  # CH3, OH, H2O+ (doublets), OH- (singlet)
WATER = "O 0 0 0.117\nH 0 0.757 -0.469\nH 0 -0.757 -0.469"
CONV_TOL = 1e-10


def _level(basis):
    return labelling.LevelOfTheory(method="pbe", basis=basis, grid_level=1, conv_tol=CONV_TOL)


def _write_xyz(path, frames):
    with open(path, "w") as fh:
        for header, atoms in frames:
            fh.write(f"{len(atoms.splitlines())}\n{header}\n{atoms}\n")
    return str(path)


def _pyscf_mol(atoms, basis, charge, spin):
    from pyscf import gto  # pylint: disable=import-outside-toplevel

    return gto.M(atom=atoms.replace("\n", ";"), unit="Angstrom", basis=basis, charge=charge,
                 spin=spin, verbose=0)


def _pyscf_ks(mol, unrestricted):
    """PySCF's own KS object with the labeller's settings (PBE, grid level 1, conv_tol)."""
    from pyscf import dft  # pylint: disable=import-outside-toplevel

    mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
    mf.xc, mf.conv_tol = "pbe", CONV_TOL
    mf.grids.level = 1
    return mf


def _density_from_focks(mol, focks, overlap):
    """[2, N, N] density of the aufbau occupation of each spin's Fock matrix (n_alpha, n_beta)."""
    dms = []
    for f, n_occ in zip(focks, mol.nelec):
        _, c = scipy.linalg.eigh(f, overlap)
        dms.append(c[:, :n_occ] @ c[:, :n_occ].T)
    return np.stack(dms)


@pytest.fixture(autouse=True, name="one_thread")
def fixture_one_thread():
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)


@pytest.fixture(scope="module", name="labelled")
def fixture_labelled(tmp_path_factory):
    """{basis: (xyz path, h5 path)}: the four frames labelled through label_file."""
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)
    tmp = tmp_path_factory.mktemp("open_shell")
    xyz = _write_xyz(tmp / "ions.xyz", FRAMES)
    out = {}
    for basis in ("def2-svp", "def2-tzvpd"):
        h5 = str(tmp / f"{basis}.h5")
        summary = labelling.label_file(xyz, h5, _level(basis), forces=basis == "def2-svp",
                                       threads=1, progress=False)
        assert summary["in_file"] == 4 and summary["unconverged_in_file"] == 0
        out[basis] = (xyz, h5)
    return out


@pytest.mark.parametrize("basis", ["def2-svp", "def2-tzvpd"])
def test_labels_equal_pyscf_uks_and_restart_in_two_cycles(labelled, basis):
    _, h5 = labelled[basis]
    ds = readers.open_dataset(h5)
    assert ds.kind == "h5" and "unrestricted" not in ds.attrs  # not forced: no attr
    for i, ((_, atoms), (charge, spin)) in enumerate(zip(FRAMES, CHARGE_SPIN)):
        rec = ds[i]
        assert (rec.charge, rec.spin, rec.unrestricted) == (charge, spin, spin != 0)
        mol = _pyscf_mol(atoms, basis, charge, spin)
        mf = _pyscf_ks(mol, unrestricted=spin != 0)
        mf.kernel()
        fock = np.asarray(mf.get_fock(dm=mf.make_rdm1()))
        assert abs(rec.energy - mf.e_tot) < 1e-10
        np.testing.assert_allclose(rec.overlap, mol.intor("int1e_ovlp"), rtol=0, atol=1e-14)
        if spin == 0:  # the closed-shell anion stays restricted
            assert rec.fock_beta is None
            np.testing.assert_allclose(rec.fock, fock, rtol=0, atol=1e-10)
            continue
        assert fock.shape == (2, mol.nao, mol.nao)
        np.testing.assert_allclose(rec.fock, fock[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(rec.fock_beta, fock[1], rtol=0, atol=1e-10)
        assert np.abs(rec.fock - rec.fock_beta).max() > 1e-2  # really spin-polarised
        restart = _pyscf_ks(mol, unrestricted=True)
        restart.kernel(dm0=_density_from_focks(mol, (rec.fock, rec.fock_beta), rec.overlap))
        assert restart.converged and restart.cycles <= 2, restart.cycles
        assert abs(restart.e_tot - rec.energy) < 1e-9
        if basis == "def2-svp":  # forces: UKS analytic gradients
            grad = mf.nuc_grad_method().kernel()  # Eh/bohr
            np.testing.assert_allclose(rec.forces, -grad / BOHR_ANGSTROM, rtol=0, atol=1e-7)
    with h5py.File(h5, "r") as f:  # the file says per structure which labels it holds
        assert ["fock_beta" in f[k] for k in sorted(f)] == [True, True, True, False]
        assert "fock_beta" in json.loads(f["0000000"].attrs["checksums"])


def test_unrestricted_flag_on_closed_shell_and_charge_spin_flags(tmp_path, labelled):
    """--unrestricted: UKS on water gives beta = alpha and the RKS energy; --charge/--spin
    reach the SCF; the attr binds a resume; a file without it resumes as restricted."""
    water = _write_xyz(tmp_path / "water.xyz", [("", WATER)])
    forced = str(tmp_path / "forced.h5")
    flags = ["--input", water, "--xc", "pbe", "--basis", "def2-svp", "--grid_level", "1",
             "--conv_tol", str(CONV_TOL), "--threads", "1", "--no_progress"]
    assert label_cli.main(["--out", forced, "--unrestricted", *flags]) == 0
    rec = readers.open_dataset(forced)[0]
    assert rec.unrestricted and rec.spin == 0
    # PySCF's UKS guess breaks the spin symmetry of a closed shell (init_guess_breaksym); the
    # SCF returns to the symmetric state within its tolerance (1.1e-7 Eh measured here).
    assert np.abs(rec.fock_beta - rec.fock).max() < 1e-6
    mol = _pyscf_mol(WATER, "def2-svp", 0, 0)
    rks = _pyscf_ks(mol, unrestricted=False)
    rks.kernel()
    assert abs(rec.energy - rks.e_tot) < 1e-8
    np.testing.assert_allclose(rec.fock, rks.get_fock(), rtol=0, atol=1e-6)
    with h5py.File(forced, "r") as f:
        assert f.attrs["unrestricted"] and "fock_beta" in f["0000000"]
    with pytest.raises(ValueError, match="unrestricted=True there, False here"):
        labelling.label_file(water, forced, _level("def2-svp"), threads=1, progress=False)
    # A restricted file (no attr, as every file written before the option) resumes unforced
    # and refuses a forced run.
    plain = str(tmp_path / "plain.h5")
    labelling.label_file(water, plain, _level("def2-svp"), threads=1, progress=False)
    with h5py.File(plain, "r") as f:
        assert "unrestricted" not in f.attrs and "fock_beta" not in f["0000000"]
        np.testing.assert_allclose(h5format.unpack_upper(f["0000000/fock"][()]), rks.get_fock(),
                                   rtol=0, atol=1e-6)
    assert readers.open_dataset(plain)[0].fock_beta is None
    again = labelling.label_file(water, plain, _level("def2-svp"), threads=1, progress=False)
    assert (again["skipped"], again["labelled"]) == (1, 0)
    with pytest.raises(ValueError, match="unrestricted=False there, True here"):
        labelling.label_file(water, plain, _level("def2-svp"), threads=1, progress=False,
                             unrestricted=True)
    # --charge=1 --spin=1 on a header-less frame: the H2O+ doublet of the labelled file.
    cation = str(tmp_path / "cation.h5")
    assert label_cli.main(["--out", cation, "--charge", "1", "--spin", "1", *flags]) == 0
    ion = readers.open_dataset(cation)[0]
    ref = readers.open_dataset(labelled["def2-svp"][1])[2]
    assert (ion.charge, ion.spin) == (1, 1) and abs(ion.energy - ref.energy) < 1e-10
    np.testing.assert_allclose(ion.fock_beta, ref.fock_beta, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="cannot have spin 2S=0"):  # parity still checked
        labelling.label_file(water, str(tmp_path / "bad.h5"), _level("def2-svp"), charge=1,
                             spin=0, progress=False)


def test_level_of_theory_hash_and_old_attrs_unchanged():
    """The embedded dataset's cache name hashes asdict(LEVEL): it must stay the six fields."""
    level = embedded.LEVEL
    fields = {"method": "pbe", "basis": "def2-tzvpd", "ecp": "def2-tzvpd", "grid_level": 3,
              "density_fit": True, "conv_tol": 1e-9}
    assert dataclasses.asdict(level) == fields
    h = hashlib.sha256()
    with open(embedded.GEOMETRIES, "rb") as fh:
        h.update(fh.read())
    h.update(json.dumps(fields, sort_keys=True).encode())
    assert embedded.cache_key() == h.hexdigest()[:12]
    old = {**fields, "forces": False, "input_file": "x.xyz"}  # attrs of an old file
    check = labelling._check_same_theory  # pylint: disable=protected-access
    check(old, {**old, "unrestricted": False}, "old.h5")
    check(old, old, "old.h5")
    with pytest.raises(ValueError, match="unrestricted=False there, True here"):
        check(old, {**old, "unrestricted": True}, "old.h5")
    with pytest.raises(ValueError, match="unrestricted=True there, False here"):
        check({**old, "unrestricted": np.True_}, old, "new.h5")


def test_resume_of_a_partial_open_shell_file_loses_nothing(tmp_path, labelled):
    """Two structures in the file, one in the parts directory: the rerun labels only the
    last and the result equals the uninterrupted file."""
    xyz, reference = labelled["def2-svp"]
    out = str(tmp_path / "partial.h5")
    level = _level("def2-svp")
    first = labelling.label_file(xyz, out, level, forces=True, limit=2, threads=1,
                                 progress=False)
    assert first["in_file"] == 2
    parts = out + ".parts"  # a run killed after finishing structure 2 as a part
    os.makedirs(parts)
    run_attrs = {**dataclasses.asdict(level), "forces": True, "input_file": "ions.xyz",
                 **labelling.Properties().attrs()}
    with open(os.path.join(parts, "run.json"), "w") as fh:
        json.dump(run_attrs, fh)
    task = labelling._label_task  # pylint: disable=protected-access
    task(2, geometry.read_structures(xyz)[2], level, 100, True, parts)
    summary = labelling.label_file(xyz, out, level, forces=True, threads=1, progress=False)
    assert (summary["skipped"], summary["labelled"], summary["in_file"]) == (3, 1, 4)
    assert not os.path.exists(parts)
    with h5py.File(out, "r") as fa, h5py.File(reference, "r") as fb:
        assert sorted(fa) == sorted(fb) == [h5format.group_key(i) for i in range(4)]
        for key in fa:
            assert sorted(fa[key]) == sorted(fb[key])
            for name in fa[key]:
                np.testing.assert_allclose(fa[key][name][()], fb[key][name][()], rtol=0,
                                           atol=1e-10)
            assert dict(fa[key].attrs) == dict(fb[key].attrs)
    a, b = readers.open_dataset(out), readers.open_dataset(reference)
    for i in range(4):
        assert (a[i].fock_beta is None) == (b[i].fock_beta is None)
        if b[i].fock_beta is not None:
            np.testing.assert_allclose(a[i].fock_beta, b[i].fock_beta, rtol=0, atol=1e-10)


def test_fock_beta_round_trip_checksum_and_verify(tmp_path, labelled):
    rng = np.random.default_rng(3)
    mol = _pyscf_mol(FRAMES[1][1], "def2-svp", 0, 1)
    n = mol.nao
    f_a, f_b = (m + m.T for m in rng.normal(size=(2, n, n)))
    path = str(tmp_path / "rt.h5")
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, {"method": "pbe", "basis": "def2-svp", "ecp": ""})
        for key, beta in (("0000000", f_b), ("0000001", None)):
            h5format.write_structure(
                f, key, elements=[8, 1], coords=mol.atom_coords() * BOHR_ANGSTROM, fock=f_a,
                fock_beta=beta, overlap=mol.intor("int1e_ovlp"), energy=-75.0, charge=0, spin=1,
                n_electrons=9, converged=True, scf_cycles=5, source="oh.xyz:0")
        with pytest.raises(ValueError, match="fock_beta has shape"):
            h5format.write_structure(
                f, "0000002", elements=[8, 1], coords=mol.atom_coords(), fock=f_a,
                fock_beta=f_b[:-1, :-1], overlap=f_a, energy=0.0, charge=0, spin=1,
                n_electrons=9, converged=True, scf_cycles=1, source="")
    ds = readers.open_dataset(path)
    np.testing.assert_array_equal(ds[0].fock, f_a)  # exact round trip
    np.testing.assert_array_equal(ds[0].fock_beta, f_b)
    assert ds[1].fock_beta is None and "fock_beta" not in ds[1].extras
    del ds  # closes the file (h5py refuses to reopen it for writing while it is open)
    assert verify.verify(readers.open_dataset(labelled["def2-tzvpd"][1]), 4) == 0
    with h5py.File(path, "a") as f:  # one bit of the beta matrix changes on disk
        f["0000000/fock_beta"][5] = np.nextafter(f["0000000/fock_beta"][5], np.inf)
    with pytest.raises(DataError, match=r"group '0000000', dataset 'fock_beta': stored checksum"):
        readers.open_dataset(path)[0]  # pylint: disable=expression-not-assigned
    with pytest.raises(DataError, match="dataset 'fock_beta'"):
        h5format.H5Dataset(path).read("0000000")
    np.testing.assert_array_equal(readers.open_dataset(path, verify=False)[0].fock_beta[0, 5],
                                  np.nextafter(f_b[0, 5], np.inf))
    with h5py.File(path, "a") as f:  # a beta matrix of the wrong size
        del f["0000001"].attrs["checksums"]
        f["0000001"].create_dataset("fock_beta", data=np.zeros(n * (n - 1) // 2))
    with pytest.raises(DataError, match=r"0000001/fock_beta: packed size"):
        readers.open_dataset(path)[1]  # pylint: disable=expression-not-assigned


@pytest.mark.parametrize("layout", ["stacked", "separate"])
def test_omol_csh_spin_resolved_layouts(tmp_path, labelled, layout):
    """OMol_CSH-style files with [2, P] `fock` or `fock` + `fock_beta`, in the omol_csh AO
    order, read back as the PySCF-order alpha/beta Fock matrices; charge/spin attrs work."""
    src = readers.open_dataset(labelled["def2-tzvpd"][1])
    path = str(tmp_path / f"omol_{layout}.h5")
    names = {0: "ch3", 2: "h2o_cation", 3: "oh_anion"}
    with h5py.File(path, "w") as f:
        for i, name in names.items():
            rec = src[i]
            g = f.create_group(name)
            g.create_dataset("elements", data=rec.elements)
            g.create_dataset("coords", data=rec.coords)
            pack = lambda m, rec=rec: h5format.pack_upper(conventions.from_pyscf(  # noqa: E731
                m, rec.elements, "def2-tzvpd", "def2-tzvpd", "omol_csh"))
            if rec.fock_beta is None:
                g.create_dataset("fock", data=pack(rec.fock))
            elif layout == "stacked":
                g.create_dataset("fock", data=np.stack([pack(rec.fock), pack(rec.fock_beta)]))
            else:
                g.create_dataset("fock", data=pack(rec.fock))
                g.create_dataset("fock_beta", data=pack(rec.fock_beta))
            # spin attr as 2S + 1 for the cation (multiplicity), as 2S otherwise
            g.attrs.update(charge=rec.charge, spin=rec.spin + (i == 2))
    ds = readers.open_dataset(path)
    assert ds.kind == "omol_csh"
    for j, (i, name) in enumerate(names.items()):
        rec, ref = ds[j], src[i]
        assert rec.key == name and (rec.charge, rec.spin) == (ref.charge, ref.spin)
        np.testing.assert_allclose(rec.fock, ref.fock, rtol=0, atol=1e-12)
        if ref.fock_beta is None:
            assert rec.fock_beta is None
        else:
            np.testing.assert_allclose(rec.fock_beta, ref.fock_beta, rtol=0, atol=1e-12)
            assert not np.allclose(conventions.from_pyscf(  # the conversion really permutes
                ref.fock_beta, ref.elements, "def2-tzvpd", "def2-tzvpd", "omol_csh"),
                ref.fock_beta)
    del ds  # closes the file
    with h5py.File(path, "a") as f:  # a NaN in the beta matrix: verify names it
        beta = "fock" if layout == "stacked" else "fock_beta"
        row = (1, 0) if layout == "stacked" else (0,)
        f["ch3"][beta][row] = np.nan
    with pytest.raises(DataError, match=r"\[ch3\]: dataset 'fock_beta' holds 1 non-finite"):
        readers.open_dataset(path)[0]  # pylint: disable=expression-not-assigned
    assert verify.verify(readers.open_dataset(path), 3) == 1


def test_unrestricted_targets_and_finite_field_polarizability(tmp_path):
    """UHF targets of H2O+ (the OH radical's degenerate pi shell stalls field SCFs): mo_energy
    [2, K], dipole and polarisabilities against PySCF's UHF and finite differences."""
    from pyscf import scf  # pylint: disable=import-outside-toplevel

    xyz = _write_xyz(tmp_path / "cation.xyz", [FRAMES[2]])
    out = str(tmp_path / "cation.h5")
    level = labelling.LevelOfTheory(method="HF", basis="def2-svp", conv_tol=1e-11)
    labelling.label_file(xyz, out, level, threads=1, progress=False,
                         props=labelling.Properties(dipole=True, polarizability_ff=True))
    rec = readers.open_dataset(out)[0]
    mol = _pyscf_mol(FRAMES[2][1], "def2-svp", 1, 1)
    mf = scf.UHF(mol).set(conv_tol=1e-11)
    mf.kernel()
    ex = rec.extras
    assert ex["mo_energy"].shape == (2, mol.nao) and ex["dipole"].shape == (3,)
    e, c = mf.eig((rec.fock, rec.fock_beta), rec.overlap)  # [2, N], [2, N, N]
    dm = mf.make_rdm1(c, mf.get_occ(e, c))  # [2, N, N] of the stored matrices
    np.testing.assert_allclose(ex["mo_energy"], e, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ex["mo_energy"], mf.mo_energy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ex["dipole"], mf.dip_moment(mol, dm, unit="AU", verbose=0),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(ex["dipole"], mf.dip_moment(unit="AU", verbose=0), atol=1e-6)
    r = reference_targets.ao_dipole(mol)

    def dipole(field, focks):  # of the aufbau density of F_s + field . r, F held fixed
        dm = _density_from_focks(mol, [f + np.einsum("x,xij->ij", field, r) for f in focks],
                                 rec.overlap)
        return reference_targets.nuclear_dipole(mol) - np.einsum("xij,ji->x", r, dm[0] + dm[1])

    h = 1e-4
    nsc = np.stack([(dipole(h * e, (rec.fock, rec.fock_beta))
                     - dipole(-h * e, (rec.fock, rec.fock_beta))) / (2 * h)
                    for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(ex["polarizability"], nsc, rtol=0, atol=1e-6)

    def field_energy(field):  # UHF energy with h_core + field . r
        fmf = scf.UHF(mol).set(conv_tol=1e-12)
        h1 = fmf.get_hcore() + np.einsum("x,xij->ij", field, r)
        fmf.get_hcore = lambda *_: h1
        return fmf.kernel(dm0=mf.make_rdm1())

    step = 1e-3
    diag = [-(field_energy(step * e) + field_energy(-step * e) - 2 * mf.e_tot) / step**2
            for e in np.eye(3)]
    ff = ex["polarizability_ff"]
    np.testing.assert_allclose(np.diag(ff), diag, rtol=2e-5)  # 1.2e-6 measured
    np.testing.assert_allclose(ff, ff.T, rtol=0, atol=1e-6)
    assert np.all(np.diag(ff) > 1.0)
    # Identical alpha and beta matrices of a closed shell: the restricted targets.
    mol_w = _pyscf_mol(WATER, "def2-svp", 0, 0)
    rhf = scf.RHF(mol_w).run(conv_tol=1e-10)
    f, s = rhf.get_fock(), rhf.get_ovlp()
    restricted = reference_targets.orbital_properties(mol_w, f, s)
    both = reference_targets.orbital_properties(mol_w, np.stack([f, f]), s)
    np.testing.assert_allclose(both["mo_energy"], [restricted["mo_energy"]] * 2, atol=1e-12)
    for name in ("dipole", "polarizability"):
        np.testing.assert_allclose(both[name], restricted[name], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="restricted .* cannot describe spin 2S=1"):
        reference_targets.orbital_properties(mol, rec.fock, rec.overlap)
