"""Periodic structures, image pairs, Bloch transforms and PySCF-PBC labels (docs/periodic.md).

PySCF is the oracle: the real-space labels of a k-point SCF summed back to H(k) must give the
SCF's own F(k) and S(k) on its mesh; bands interpolated from them are compared with
``mf.get_bands`` off the mesh; S(k) off the mesh with ``cell.pbc_intor``. The SCFs are h-BN
(2 atoms, GTH-SZV, GTH-PBE, GDF, 2x2x1 k-mesh, low ke_cutoff) to stay fast on 2 cores.
"""

import dataclasses
import itertools
import os
import shutil
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # pylint: disable=wrong-import-position

import ase
import ase.io
import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data_prep import label as label_cli  # pylint: disable=wrong-import-position
from helm_jax.data import geometry, h5format, labelling, labelling_pbc  # pylint: disable=wrong-import-position
from helm_jax.data import periodic as P  # pylint: disable=wrong-import-position
from helm_jax.data.readers import open_dataset  # pylint: disable=wrong-import-position
from helm_jax.data.records import DataError  # pylint: disable=wrong-import-position

A_BN, C_VAC = 2.50, 6.0
HBN_CELL = np.array([[A_BN, 0, 0], [-A_BN / 2, A_BN * np.sqrt(3) / 2, 0], [0, 0, C_VAC]])
HBN_XYZ = np.array([[0.0, 0.0, C_VAC / 2], [0.0, A_BN / np.sqrt(3), C_VAC / 2]])
PBC_2D = np.array([True, True, False])
SETTINGS = labelling_pbc.PeriodicSettings(method="pbe", basis="gth-szv", pseudo="gth-pbe",
                                          kmesh=(2, 2, 1), density_fit="gdf", ke_cutoff=20,
                                          conv_tol=1e-11)
OFF_MESH = np.array([[0.1, 0.2, 0.0], [0.37, 0.11, 0.0], [0.5, 0.25, 0.0], [0.17, 0.43, 0.0]])


@pytest.fixture(autouse=True, name="one_thread")
def fixture_one_thread():
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)


def _hbn(coords=HBN_XYZ, source="hbn"):
    return geometry.Structure(elements=np.array([5, 7], np.int32), coords=np.asarray(coords),
                              charge=0, spin=0, source=source, cell=HBN_CELL, pbc=PBC_2D)


def _full(labels):
    """(translations, H(T), S(T)) full matrices of PeriodicLabels, weights applied."""
    args = (labels.pairs[:, 0], labels.pairs[:, 1], labels.translations)
    t, h = P.assemble_translations(*args, labels.fock_blocks, labels.block_offsets,
                                   labels.n_ao_per_atom, labels.weight)
    _, s = P.assemble_translations(*args, labels.overlap_blocks, labels.block_offsets,
                                   labels.n_ao_per_atom, labels.weight)
    return t, h, s


# ---------------------------------------------------------------------------- image pairs


def _brute_force_pairs(coords, cell, pbc, cutoff, reach=8):
    """(i, j, T) -> distance by enumerating a large supercell."""
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    out = {}
    for t in itertools.product(*ranges):
        shift = np.asarray(t) @ cell
        for i, ri in enumerate(coords):
            for j, rj in enumerate(coords):
                d = np.linalg.norm(rj + shift - ri)
                if d < cutoff and not (i == j and not any(t)):
                    out[(i, j, *t)] = d
    return out


@pytest.mark.parametrize("case", ["graphene", "triclinic_3d", "unwrapped_1d"])
def test_image_pairs_small_cell_matches_supercell_enumeration(case):
    rng = np.random.default_rng(0)
    if case == "graphene":  # 2.46 A cell, 6 A cutoff: many images of each pair and of i=i
        a = 2.46
        cell = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 0]])  # no vacuum row
        coords, pbc, cutoff = np.array([[0, 0, 0], [0, a / np.sqrt(3), 0]]), PBC_2D, 6.0
    elif case == "triclinic_3d":
        cell = np.array([[2.7, 0.1, 0.3], [0.9, 2.5, -0.2], [0.4, 0.8, 3.1]])
        coords, pbc, cutoff = rng.uniform(-1, 4, (3, 3)), np.ones(3, bool), 5.5
    else:  # a chain with atoms outside the home cell
        cell = np.diag([1.9, 0.0, 0.0])
        coords, pbc, cutoff = np.array([[-3.1, 0, 0], [5.2, 0.4, 0.1]]), [True, False, False], 7.0
    pl = P.image_pairs(coords, cell, pbc, cutoff)
    want = _brute_force_pairs(coords, np.asarray(cell, float), np.asarray(pbc), cutoff)
    got = {(int(i), int(j), *t.tolist()): d
           for i, j, t, d in zip(pl.i, pl.j, pl.translation, pl.distance)}
    print(f"{case}: {len(got)} image pairs within {cutoff} A")
    assert got.keys() == want.keys() and len(got) == len(pl)
    assert max(abs(got[k] - want[k]) for k in got) < 1e-12
    assert any(k[0] == k[1] for k in got)  # an atom's own images
    keys = [(int(i), int(j), *t.tolist()) for i, j, t in zip(pl.i, pl.j, pl.translation)]
    assert keys == sorted(keys)  # deterministic lexicographic order
    np.testing.assert_allclose(pl.vector, coords[pl.j] + pl.translation @ np.asarray(cell, float)
                               - coords[pl.i], atol=1e-12)


def test_bvk_pairs_cover_each_class_once_with_minimum_images():
    for mesh in [(2, 2, 1), (3, 3, 1), (4, 3, 1)]:
        bvk = P.bvk_pairs(HBN_XYZ, HBN_CELL, PBC_2D, mesh)
        n_classes = 4 * mesh[0] * mesh[1]
        # weights of each class sum to one, so the weighted Bloch sum counts it once
        cls = {}
        for i, j, b, w in zip(bvk.pairs.i, bvk.pairs.j, bvk.bvk_index, bvk.weight):
            cls[(i, j, *b)] = cls.get((i, j, *b), 0) + w
        assert len(cls) == n_classes and np.allclose(list(cls.values()), 1.0)
        # each stored T is a nearest member of its class (brute force over the class)
        for i, j, t, d in zip(bvk.pairs.i, bvk.pairs.j, bvk.pairs.translation,
                              bvk.pairs.distance):
            others = [np.linalg.norm(HBN_XYZ[j] + (t + np.array([m * mesh[0], n * mesh[1], 0]))
                                     @ HBN_CELL - HBN_XYZ[i])
                      for m in range(-3, 4) for n in range(-3, 4) if m or n]
            assert d <= min(others) + 1e-9
    assert np.any(P.bvk_pairs(HBN_XYZ, HBN_CELL, PBC_2D, (2, 2, 1)).weight == 0.5)  # ties


# ------------------------------------------------------------------------ Bloch transforms


def test_bloch_sign_matches_pyscf_overlap():
    """S(k) = sum_T exp(+2 pi i k.T) S(T) with S(T) = <i, 0 | j, T> from molecular
    integrals: the sign of PySCF's cell.pbc_intor (and of its k-point Fock matrices).
    PySCF's 2-D cell also sums AO images along the vacuum vector (6 A here), so T runs over
    those too (the labels fold them in; their alias_distance says so)."""
    from pyscf import gto as mgto  # pylint: disable=import-outside-toplevel

    cell = labelling_pbc.build_cell(_hbn(), SETTINGS)
    k = OFF_MESH[:2]
    ref = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=cell.get_abs_kpts(k)))
    home = mgto.M(atom=[["B", HBN_XYZ[0]], ["N", HBN_XYZ[1]]], unit="A", basis="gth-szv")
    ts = np.array([(m, n, l) for m in range(-8, 9) for n in range(-8, 9)
                   for l in (-2, -1, 0, 1, 2)])
    s_t = np.stack([mgto.intor_cross("int1e_ovlp", home, mgto.M(
        atom=[["B", HBN_XYZ[0] + t @ HBN_CELL], ["N", HBN_XYZ[1] + t @ HBN_CELL]], unit="A",
        basis="gth-szv")) for t in ts])
    assert np.abs(P.bloch_sum(s_t, ts, k) - ref).max() < 1e-9
    assert np.abs(P.bloch_sum(s_t, -ts, k) - ref).max() > 0.1  # the other sign is wrong
    in_plane = ts[:, 2] == 0
    assert np.abs(P.bloch_sum(s_t[in_plane], ts[in_plane], k) - ref).max() > 1e-2  # folded
    bvk = P.bvk_pairs(HBN_XYZ, HBN_CELL, PBC_2D, (2, 2, 1), fold_axes=~PBC_2D)
    assert bvk.alias_distance.max() <= C_VAC + 1e-9


def test_real_space_blocks_inverts_bloch_sum_on_the_bvk_supercell():
    rng = np.random.default_rng(1)
    mesh = (3, 2, 1)
    ts = np.array([(m, n, 0) for m in range(-4, 5) for n in range(-3, 4)])
    h_t = rng.normal(size=(len(ts), 4, 4))  # H(T) with H(-T) = H(T)^T: a real operator
    for a, t in enumerate(ts):
        b = int(np.flatnonzero((ts == -t).all(1))[0])
        if b < a:
            h_t[a] = h_t[b].T
    k = P.mp_kpts(mesh)[np.random.default_rng(2).permutation(6)]  # any order
    trans, back = P.real_space_blocks(P.bloch_sum(h_t, ts, k), mesh, k)
    for t, m in zip(trans, back):  # the BvK sum over T = t + L
        alias = [h for tt, h in zip(ts, h_t) if np.all((tt - t) % np.array(mesh) == 0)]
        np.testing.assert_allclose(m, np.sum(alias, 0), atol=1e-12)
    np.testing.assert_allclose(P.bloch_sum(back, trans, k), P.bloch_sum(h_t, ts, k), atol=1e-11)
    with pytest.raises(ValueError, match="not on the Gamma-centred"):
        P.real_space_blocks(P.bloch_sum(h_t, ts, k + 0.1), mesh, k + 0.1)
    with pytest.raises(ValueError, match="imaginary part"):
        P.real_space_blocks(P.bloch_sum(h_t + 0.01j, ts, k), mesh, k)


def test_overlap_interpolation_from_bvk_labels_improves_with_the_mesh():
    """S(T) obtained exactly from S(k) on a mesh, interpolated to off-mesh k and compared
    with PySCF's S(k) there: the minimum-image choice makes the error fall with the mesh
    (Gaussian tails); taking T in [0, N) instead does not."""
    cell = labelling_pbc.build_cell(_hbn(), SETTINGS)
    ref = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=cell.get_abs_kpts(OFF_MESH)))
    errs, naive = {}, {}
    n_ao = cell.aoslice_by_atom()[:, 3] - cell.aoslice_by_atom()[:, 2]
    for n in (2, 3, 4, 6, 8):
        mesh = (n, n, 1)
        k = cell.get_scaled_kpts(cell.make_kpts(mesh))
        trans, s_t = P.real_space_blocks(cell.pbc_intor("int1e_ovlp", hermi=1,
                                                        kpts=cell.make_kpts(mesh)), mesh, k)
        bvk = P.bvk_pairs(HBN_XYZ, HBN_CELL, PBC_2D, mesh)
        pl = bvk.pairs
        blocks = P.gather_blocks(s_t, trans, pl.i, pl.j, bvk.bvk_index, n_ao)
        t, s = P.assemble_translations(pl.i, pl.j, pl.translation, blocks,
                                       P.block_offsets(pl.i, pl.j, n_ao), n_ao, bvk.weight)
        errs[n] = np.abs(P.bloch_sum(s, t, OFF_MESH) - ref).max()
        naive[n] = np.abs(P.bloch_sum(s_t, trans, OFF_MESH) - ref).max()
    print("max |S(k) error| off the mesh, minimum image:",
          {n: f"{e:.1e}" for n, e in errs.items()}, "T in [0, N):",
          {n: f"{e:.1e}" for n, e in naive.items()})
    assert all(errs[a] > errs[b] for a, b in [(2, 3), (3, 4), (4, 6), (6, 8)])
    assert errs[8] < 1e-5 and min(naive.values()) > 0.1


# ------------------------------------------------------------------------------ structures


def test_periodic_structures_from_extxyz_ase_and_errors(tmp_path):
    path = tmp_path / "frames.extxyz"
    bulk = ase.Atoms("C2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]],
                     cell=[[0, 1.78, 1.78], [1.78, 0, 1.78], [1.78, 1.78, 0]], pbc=True)
    layer = ase.Atoms("BN", positions=HBN_XYZ, cell=HBN_CELL, pbc=PBC_2D)
    ase.io.write(str(path), [layer, bulk], format="extxyz")
    with open(path, "a") as fh:  # a molecule in a Lattice box without pbc= stays a molecule
        fh.write('2\nLattice="20 0 0 0 20 0 0 0 20" Properties=species:S:1:pos:R:3\n'
                 "H 0 0 0\nH 0 0 0.74\n")
    s = geometry.read_structures(str(path))
    assert [x.is_periodic for x in s] == [True, True, False]
    assert s[0].pbc.tolist() == [True, True, False] and s[1].pbc.tolist() == [True] * 3
    np.testing.assert_allclose(s[0].cell, HBN_CELL)
    assert s[2].cell is None and s[2].pbc is None
    assert geometry.structure_from_atoms(bulk).is_periodic
    assert not geometry.structure_from_atoms(ase.Atoms("H2", [[0, 0, 0], [0, 0, 0.74]])).is_periodic
    # rMD17's Lattice box without pbc= reads as molecules, as before
    assert not any(x.is_periodic for x in geometry.read_structures(
        os.path.join(ROOT, "tests", "data", "ethanol_train_01_first12.xyz")))

    with pytest.raises(ValueError, match=r"hbn: singular cell"):
        geometry.check_periodic([5, 7], HBN_XYZ, [[2.5, 0, 0], [5.0, 0, 0], [0, 0, 6]],
                                PBC_2D, "hbn")
    with pytest.raises(ValueError, match=r"hbn: pbc is true along axis 2 .* lattice vector 2 is "
                                         r"zero: give that lattice vector"):
        geometry.check_periodic([5, 7], HBN_XYZ, HBN_CELL * [[1], [1], [0]], [1, 1, 1], "hbn")
    dup = np.array([[0.0, 0, 3], [0.0, 1.44, 3], [2.5, 0.02, 3]])  # atom 0 again at x = a
    with pytest.raises(ValueError, match=r"hbn: atoms 0 and 2 \(in cell T=\[-1, 0, 0\]\) are "
                                         r"0.0200 A apart .* periodic images"):
        geometry.check_periodic([5, 7, 5], dup, HBN_CELL, PBC_2D, "hbn")
    with pytest.raises(ValueError, match=r"atom 0 and its own periodic image .* 0.0500 A"):
        geometry.check_periodic([6], [[0, 0, 0]], np.diag([0.05, 3, 3]), [1, 1, 1], "x")
    bad = tmp_path / "bad.extxyz"
    bad.write_text('2\nLattice="2.5 0 0 5 0 0 0 0 6" pbc="T T F" Properties=species:S:1:pos:R:3\n'
                   "B 0 0 3\nN 0 1.44 3\n")
    with pytest.raises(ValueError, match=r"bad.extxyz:0: singular cell"):
        geometry.read_structures(str(bad))
    with pytest.raises(ValueError, match="periodic axes first"):
        labelling_pbc.build_cell(geometry.Structure(
            np.array([5, 7]), HBN_XYZ[:, [2, 0, 1]], 0, 0, "yz", HBN_CELL[[2, 0, 1]][:, [2, 0, 1]],
            np.array([False, True, True])), SETTINGS)
    with pytest.raises(ValueError, match="non-periodic axis"):
        P.check_kmesh((3, 3, 2), PBC_2D)


def test_smeared_fermi_level_matches_pyscf_smearing_solver():
    """The stored Fermi level of a smeared (metallic) SCF is the chemical potential PySCF's
    k-point Fermi-Dirac smearing solves for (pyscf.scf.smearing._smearing_optimize over all
    k-points' orbitals, nkpts * nelectron / 2 occupied), recomputed from the orbital energies
    because PySCF does not keep it."""
    import importlib  # pylint: disable=import-outside-toplevel
    smearing = importlib.import_module("pyscf.scf.smearing")

    rng = np.random.default_rng(3)
    mo_e = [np.sort(rng.uniform(-1.0, 0.8, 8)) for _ in range(9)]  # 9 k-points, 8 bands
    for n_electrons, sigma in [(8, 0.01), (6, 0.05), (9, 0.002)]:
        mu, occ = smearing._smearing_optimize(  # pylint: disable=protected-access
            smearing._fermi_smearing_occ, np.concatenate(mo_e), 9 * n_electrons / 2, sigma)  # pylint: disable=protected-access
        got = labelling_pbc.fermi_dirac_mu(mo_e, n_electrons, sigma)
        assert abs(got - mu) < 1e-10 and abs(2 * occ.sum() / 9 - n_electrons) < 1e-9


# ---------------------------------------------------------------------- PySCF-PBC labels


@pytest.mark.parametrize("method", ["pbe", "hf"])
def test_all_electron_krks_and_krhf_labels_give_back_the_scf_fock(method):
    """All-electron basis (no pseudopotential: KS on Becke grids), GDF, KRKS and KRHF: a
    2-D layer of H2 molecules in STO-3G on a 2x2x1 mesh; the labels return F(k), S(k)."""
    cell = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 6.0]])
    s = geometry.Structure(np.array([1, 1], np.int32), np.array([[0, 1.5, 3], [0.74, 1.5, 3]]),
                           0, 0, "h2_layer", cell, PBC_2D)
    settings = labelling_pbc.PeriodicSettings(method=method, basis="sto-3g", pseudo="",
                                              kmesh=(2, 2, 1), grid_level=1, conv_tol=1e-10)
    mf = labelling_pbc.run_scf(s, settings)
    assert mf.converged and (method == "hf" or type(mf.grids).__name__ == "BeckeGrids")
    labels = labelling_pbc.labels_from_scf(mf, s, settings).labels
    kf = mf.cell.get_scaled_kpts(mf.kpts)
    assert np.abs(P.labels_to_k(labels, kf) - np.asarray(mf.get_fock(dm=mf.make_rdm1()))).max() < 1e-8
    assert np.abs(P.labels_to_k(labels, kf, "overlap") - np.asarray(mf.get_ovlp())).max() < 1e-8
    with pytest.raises(ValueError, match="1-D chain"):
        labelling_pbc.build_cell(geometry.Structure(s.elements, s.coords, 0, 0, "chain", cell,
                                                    np.array([True, False, False])),
                                 dataclasses.replace(settings, kmesh=(2, 1, 1)))


# ---------------------------------------------------------------------- PySCF-PBC labels


@pytest.fixture(scope="module", name="scf")
def fixture_scf():
    """One KRKS SCF of h-BN (2x2x1, GDF) and its labels."""
    from pyscf import lib  # pylint: disable=import-outside-toplevel

    lib.num_threads(1)
    s = _hbn()
    mf = labelling_pbc.run_scf(s, SETTINGS)
    assert mf.converged
    return s, mf, labelling_pbc.labels_from_scf(mf, s, SETTINGS)


def _fock_on_mesh(mf, mesh):
    """F(k), S(k) of the SCF's density on another mesh (PySCF's get_bands construction)."""
    cell = mf.cell
    kpts = cell.make_kpts(list(mesh))
    fock = np.asarray(mf.get_hcore(cell, kpts)) + np.asarray(
        mf.get_veff(cell, mf.make_rdm1(), kpts=mf.kpts, kpts_band=kpts))
    return kpts, fock, np.asarray(mf.get_ovlp(cell, kpts))


def test_labels_reproduce_the_scf_fock_on_its_mesh_and_interpolate_bands(scf, tmp_path):
    s, mf, lab = scf
    labels = lab.labels
    t, h_t, s_t = _full(labels)
    kfrac = mf.cell.get_scaled_kpts(mf.kpts)
    fock_ref = np.asarray(mf.get_fock(dm=mf.make_rdm1()))
    err_f = np.abs(P.bloch_sum(h_t, t, kfrac) - fock_ref).max()
    err_s = np.abs(P.bloch_sum(s_t, t, kfrac) - np.asarray(mf.get_ovlp())).max()
    print(f"Bloch round trip on the 2x2 mesh: F {err_f:.1e} Eh, S {err_s:.1e}")
    assert err_f < 1e-8 and err_s < 1e-8
    # Fermi level / HOMO / LUMO are the SCF's
    occ = np.concatenate([e[o > 0] for e, o in zip(mf.mo_energy, mf.mo_occ)])
    vir = np.concatenate([e[o == 0] for e, o in zip(mf.mo_energy, mf.mo_occ)])
    assert labels.fermi == labels.homo == pytest.approx(occ.max(), abs=1e-12)
    assert labels.lumo == pytest.approx(vir.min(), abs=1e-12) and labels.gap > 0.1
    np.testing.assert_allclose(labels.fock_minus_mu_s(),
                               labels.fock_blocks - labels.fermi * labels.overlap_blocks)
    # on-site and image blocks: H(T) = H(-T)^T
    for p in range(labels.n_pairs):
        i, j = labels.pairs[p]
        q = [q for q in range(labels.n_pairs) if labels.pairs[q].tolist() == [j, i]
             and (labels.translations[q] == -labels.translations[p]).all()]
        np.testing.assert_allclose(labels.block(q[0]), labels.block(p).T, atol=1e-10)

    # HDF5: written and read back exactly (checksummed), as the labeller writes it
    path = str(tmp_path / "one.h5")
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, SETTINGS.attrs())
        labelling_pbc.write_label(f, "0000000", s, lab)
    rec = open_dataset(path, periodic=True)[0]
    np.testing.assert_array_equal(rec.periodic.fock_blocks, labels.fock_blocks)
    np.testing.assert_array_equal(rec.periodic.translations, labels.translations)
    np.testing.assert_array_equal(rec.cell, HBN_CELL)
    assert rec.pbc.tolist() == PBC_2D.tolist() and rec.periodic.kmesh.tolist() == [2, 2, 1]
    assert rec.energy == lab.energy and rec.periodic.gap == labels.gap and rec.fock is None

    # bands off the mesh: exact labels of the 2x2 SCF vs PySCF's get_bands (same density);
    # then labels of the same density on a 4x4 mesh (F(k) there rebuilt from get_bands'
    # orbitals, F = S C E C^H S): the error is the mesh's and falls with it
    nocc = mf.cell.nelectron // 2
    mesh4 = (4, 4, 1)
    k4 = mf.cell.make_kpts(list(mesh4))
    e_all, c_all = mf.get_bands(np.concatenate([k4, mf.cell.get_abs_kpts(OFF_MESH)]))
    ref = np.asarray(e_all[len(k4):])[:, :nocc + 1]
    errs = {"2x2": np.abs(P.bands(P.bloch_sum(h_t, t, OFF_MESH), P.bloch_sum(
        s_t, t, OFF_MESH))[:, :nocc + 1] - ref).max()}
    ovlp4 = np.asarray(mf.get_ovlp(mf.cell, k4))
    fock4 = np.stack([o @ c @ np.diag(e) @ c.conj().T @ o
                      for o, c, e in zip(ovlp4, c_all[:len(k4)], e_all[:len(k4)])])
    kf = mf.cell.get_scaled_kpts(k4)
    trans, f_t = P.real_space_blocks(fock4, mesh4, kf, imag_tol=1e-6)
    _, o_t = P.real_space_blocks(ovlp4, mesh4, kf)
    bvk = P.bvk_pairs(s.coords, s.cell, s.pbc, mesh4)
    pl, n_ao = bvk.pairs, labels.n_ao_per_atom
    off = P.block_offsets(pl.i, pl.j, n_ao)
    tt, hh = P.assemble_translations(pl.i, pl.j, pl.translation, P.gather_blocks(
        f_t, trans, pl.i, pl.j, bvk.bvk_index, n_ao), off, n_ao, bvk.weight)
    _, ss = P.assemble_translations(pl.i, pl.j, pl.translation, P.gather_blocks(
        o_t, trans, pl.i, pl.j, bvk.bvk_index, n_ao), off, n_ao, bvk.weight)
    errs["4x4"] = np.abs(P.bands(P.bloch_sum(hh, tt, OFF_MESH), P.bloch_sum(
        ss, tt, OFF_MESH))[:, :nocc + 1] - ref).max()
    print("max |band error| off the mesh (valence + lowest conduction band), Eh:",
          {n: f"{e:.1e}" for n, e in errs.items()})
    assert errs["2x2"] < 0.5 and errs["4x4"] < errs["2x2"] / 10 and errs["4x4"] < 0.02


def test_labeller_resume_translation_and_wrapping(scf, tmp_path):
    """Frame 0: h-BN translated in-plane by whole steps of the XC grid, with atom 1 wrapped
    by -a1 (so T of its pairs shift); frame 1: h-BN as in the fixture. The first run labels
    frame 0 only; frame 1's part is then written as a worker would have before a kill; the
    rerun labels nothing, merges the part, and the two frames' H(T) agree after relabelling
    T -> T + delta_j - delta_i (r_k moved by delta_k @ cell)."""
    s, _, lab = scf
    cell = labelling_pbc.build_cell(s, SETTINGS)
    shift = 2 / cell.mesh[0] * HBN_CELL[0] + 1 / cell.mesh[1] * HBN_CELL[1]
    delta = np.array([[0, 0, 0], [-1, 0, 0]])  # atom 1 moved by -a1
    moved = HBN_XYZ + shift + delta @ HBN_CELL
    frames = [ase.Atoms("BN", positions=xyz, cell=HBN_CELL, pbc=PBC_2D)
              for xyz in (moved, HBN_XYZ)]
    inp, out = str(tmp_path / "hbn.extxyz"), str(tmp_path / "hbn.h5")
    ase.io.write(inp, frames, format="extxyz")
    argv = [f"--input={inp}", f"--out={out}", "--xc=pbe", "--basis=gth-szv", "--pseudo=gth-pbe",
            "--kmesh=2,2,1", "--ke_cutoff=20", "--conv_tol=1e-11", "--no_progress"]
    assert label_cli.main(argv + ["--limit=1"]) == 0
    # another mesh or a molecular labeller on this file: refused before any SCF
    assert label_cli.main([a if not a.startswith("--kmesh") else "--kmesh=3,3,1"
                           for a in argv]) == 2
    with pytest.raises(ValueError, match="periodic frame"):
        labelling.label_file(inp, str(tmp_path / "mol.h5"), labelling.LevelOfTheory())
    structures = geometry.read_structures(inp)
    os.makedirs(out + ".parts", exist_ok=True)
    labelling._atomic_write(  # pylint: disable=protected-access
        os.path.join(out + ".parts", "0000001.h5"),
        lambda tmp: _write_part(tmp, structures[1], lab))
    summary = labelling_pbc.label_file(inp, out, SETTINGS, progress=False)
    assert summary["skipped"] == 2 and summary["labelled"] == 0 and summary["in_file"] == 2
    assert not os.path.exists(out + ".parts")
    ds = open_dataset(out, periodic=True)
    a, b = ds[0].periodic, ds[1].periodic
    np.testing.assert_array_equal(b.fock_blocks, lab.labels.fock_blocks)  # merged as written
    assert ds.attrs["kmesh"] == "2,2,1" and ds.attrs["pseudo"] == "gth-pbe"
    with pytest.raises(DataError, match="holds periodic structures"):
        open_dataset(out)
    relabel = {(int(i), int(j), *(t + delta[j] - delta[i]).tolist()): p
               for p, ((i, j), t) in enumerate(zip(a.pairs, a.translations))}
    same = {(int(i), int(j), *t.tolist()): p
            for p, ((i, j), t) in enumerate(zip(a.pairs, a.translations))}
    assert a.n_pairs == b.n_pairs and len(relabel) == b.n_pairs
    worst, unrelabelled = 0.0, 0.0
    for q, ((i, j), t) in enumerate(zip(b.pairs, b.translations)):
        key = (int(i), int(j), *t.tolist())
        p = relabel[key]
        worst = max(worst, np.abs(a.block(p) - b.block(q)).max(),
                    np.abs(a.block(p, "overlap") - b.block(q, "overlap")).max())
        if key in same:  # the same label without the relabelling
            unrelabelled = max(unrelabelled, np.abs(a.block(same[key]) - b.block(q)).max())
    d_energy = abs(ds[0].energy - ds[1].energy)
    print(f"translated + wrapped vs original: max |dH|, |dS| {worst:.1e} after relabelling T, "
          f"{unrelabelled:.1e} without; |dE| {d_energy:.1e} Eh")
    assert worst < 1e-6 and unrelabelled > 1e-2 and d_energy < 1e-5


def _write_part(tmp, structure, lab):
    with h5py.File(tmp, "w") as f:
        labelling_pbc.write_label(f, "0000001", structure, lab)


# ------------------------------------------------------------- high-symmetry band paths


def test_high_symmetry_path_hex_and_fcc():
    a = 2.46
    hex120 = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 15.0]])
    k, x, labels = P.high_symmetry_path(hex120, PBC_2D, 40)
    assert k.shape == (40, 3) and x.shape == (40,) and [n for _, n in labels] == list("GKMG")
    idx = dict((n, i) for i, n in labels[:3])
    np.testing.assert_allclose(k[idx["K"]], [1 / 3, 1 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(k[idx["M"]], [0.5, 0, 0], atol=1e-15)
    assert labels[0][0] == 0 and labels[-1][0] == 39 and np.all(k[[0, -1]] == 0)
    assert np.all(np.diff(x) > 0) and np.diff(x).max() / np.diff(x).min() < 1.5
    assert x[idx["K"]] == pytest.approx(4 * np.pi / (3 * a))  # |Gamma K| = 4 pi / 3a
    # the 60-degree cell: K at (2/3, 1/3), same Cartesian lengths
    hex60 = hex120 * [[1], [1], [1]]
    hex60[1, 0] = a / 2
    k60, x60, l60 = P.high_symmetry_path(hex60, PBC_2D, 40)
    np.testing.assert_allclose(k60[l60[1][0]], [2 / 3, 1 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(x60, x, atol=1e-12)
    # a strained cell: the same fractional points, its own Cartesian lengths
    strained = hex120 @ (np.eye(3) + np.diag([0.02, -0.015, 0]) + 0.01 * np.eye(3)[[1, 0, 2]]
                         * [[1], [1], [0]])
    ks, xs, ls = P.high_symmetry_path(strained, PBC_2D, 40)
    np.testing.assert_allclose(ks, k, atol=1e-15)
    assert ls == labels and abs(xs[-1] - x[-1]) > 1e-3
    # fcc: Setyawan-Curtarolo G-X-W-K-G-L
    c = 3.567
    fcc = c / 2 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0.0]])
    kf, xf, lf = P.high_symmetry_path(fcc, [True] * 3, 60)
    assert [n for _, n in lf] == ["G", "X", "W", "K", "G", "L"] and np.all(np.diff(xf) > 0)
    cart = {n: 2 * np.pi * kf[i] @ np.linalg.inv(fcc).T for i, n in lf}
    np.testing.assert_allclose(cart["X"], [0, 2 * np.pi / c, 0], atol=1e-12)
    np.testing.assert_allclose(cart["L"], [np.pi / c] * 3, atol=1e-12)
    np.testing.assert_allclose(cart["W"], 2 * np.pi / c * np.array([0.5, 1, 0]), atol=1e-12)
    np.testing.assert_allclose(kf[lf[3][0]], [3 / 8, 3 / 8, 3 / 4])
    with pytest.raises(ValueError, match=r"2-D lattice \|a1\| = 2.000 A, \|a2\| = 3.000 A, "
                                         r"gamma = 90.0 deg.*pass kind="):
        P.high_symmetry_path(np.diag([2.0, 3.0, 15.0]), PBC_2D, 10)
    assert len(P.high_symmetry_path(np.diag([2.0, 3.0, 15.0]), PBC_2D, 10, kind="hex2d")[0]) == 10
    with pytest.raises(ValueError, match="needs pbc"):
        P.high_symmetry_path(fcc, PBC_2D, 10, kind="fcc")


def test_band_path_reference_stored_and_equal_to_mesh_bands(scf, tmp_path):
    """--band_path: PySCF's get_bands of the converged SCF along G-K-M-G, stored per
    structure; get_bands at the SCF's own mesh points gives the mesh band energies, and the
    stored path bands at G and M (points of the 2x2 mesh) are those too."""
    s, mf, lab = scf
    mesh_e = [np.sort(e) for e in mf.mo_energy]
    e_mesh, _ = mf.get_bands(mf.kpts)
    err_mesh = max(np.abs(np.sort(a) - b).max() for a, b in zip(e_mesh, mesh_e))
    settings = dataclasses.replace(SETTINGS, band_path=7)
    got = labelling_pbc.labels_from_scf(mf, s, settings)
    kp, bands = got.labels.path_kpts, got.labels.path_bands
    assert kp.shape == (7, 3) and bands.shape == (7, 8) and np.all(np.isfinite(bands))
    np.testing.assert_allclose(kp, P.high_symmetry_path(s.cell, s.pbc, 7)[0])
    kfrac = mf.cell.get_scaled_kpts(mf.kpts)
    err_path, n_on = 0.0, 0
    for n, kpt in enumerate(kp):
        on = np.flatnonzero(np.abs(kfrac - kpt).max(1) < 1e-9)
        if on.size:
            n_on += 1
            err_path = max(err_path, np.abs(bands[n] - mesh_e[on[0]]).max())
    print(f"get_bands at the mesh vs mesh bands: {err_mesh:.1e} Eh; stored path at G, M: "
          f"{err_path:.1e} Eh")
    assert err_mesh < 1e-6 and err_path < 1e-6 and n_on == 3  # G, M, G
    assert np.all(np.diff(bands, axis=1) >= 0)
    # stored (checksummed) and read back; a file without them reads None
    path = str(tmp_path / "bands.h5")
    with h5py.File(path, "w") as f:
        h5format.write_file_attrs(f, settings.attrs())
        labelling_pbc.write_label(f, "0000000", s, got)
        labelling_pbc.write_label(f, "0000001", s, lab)
    ds = open_dataset(path, periodic=True)
    np.testing.assert_array_equal(ds[0].periodic.path_bands, bands)
    np.testing.assert_array_equal(ds[0].periodic.path_kpts, kp)
    assert ds[1].periodic.path_kpts is None and ds[1].periodic.path_bands is None
    assert ds.attrs["band_path"] == 7
    bad = str(tmp_path / "tampered.h5")
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        f["0000000/path_bands"][0, 0] += 1e-3
    with pytest.raises(DataError, match="checksum"):
        open_dataset(bad, periodic=True)[0]  # pylint: disable=expression-not-assigned


def test_band_path_setting_refused_on_resume(tmp_path):
    """A file labelled without band_path (or before the setting existed) resumes with 0 and
    refuses another value before any SCF."""
    inp, out = str(tmp_path / "hbn.extxyz"), str(tmp_path / "old.h5")
    ase.io.write(inp, [ase.Atoms("BN", positions=HBN_XYZ, cell=HBN_CELL, pbc=PBC_2D)],
                 format="extxyz")
    old = {k: v for k, v in SETTINGS.attrs().items() if k != "band_path"}
    with h5py.File(out, "w") as f:  # settings attrs of a file written before band_path
        h5format.write_file_attrs(f, {**old, "input_file": "hbn.extxyz"})
    assert labelling_pbc.label_file(inp, out, SETTINGS, limit=0, progress=False)["labelled"] == 0
    with pytest.raises(ValueError, match="band_path=0 there, 5 here"):
        labelling_pbc.label_file(inp, out, dataclasses.replace(SETTINGS, band_path=5),
                                 limit=0, progress=False)
    argv = [f"--input={inp}", f"--out={out}", "--xc=pbe", "--basis=gth-szv", "--kmesh=2,2,1",
            "--ke_cutoff=20", "--conv_tol=1e-11", "--no_progress", "--limit=0"]
    assert label_cli.parse_args(argv).band_path == 0
    assert label_cli.main(argv + ["--band_path=60"]) == 2
    assert label_cli.main(argv) == 0


# ------------------------------------------------------------- distorted-cell generator


def test_make_periodic_cells_deterministic_with_bounded_distortions(tmp_path):
    from data_prep import make_periodic_cells as gen  # pylint: disable=import-outside-toplevel

    paths = [str(tmp_path / f"{k}.extxyz") for k in range(3)]
    for path, seed in zip(paths, (5, 5, 6)):
        assert gen.main(["--system=hbn", "--n=12", f"--seed={seed}", "--split=test",
                         f"--out={path}"]) == 0
    text = [open(p).read() for p in paths]
    assert text[0] == text[1] and text[0] != text[2]
    assert gen.format_frames(gen.make_frames("hbn", 3, 5), "hbn", 5, "test") == \
        "".join(text[0].splitlines(keepends=True)[:12])  # frame f independent of --n
    for system in ("graphene", "hbn", "diamond"):
        _, xyz0, cell0, pbc = gen.ideal_cell(system)
        frames = gen.make_frames(system, 12, 1, ideal_first=True)
        np.testing.assert_array_equal(frames[0]["coords"], xyz0)
        np.testing.assert_array_equal(frames[0]["cell"], cell0)
        layer = system != "diamond"
        for fr in frames[1:]:
            eps = np.linalg.solve(cell0, fr["cell"]) - np.eye(3)  # cell = cell0 (1 + eps)
            np.testing.assert_allclose(eps, eps.T, atol=1e-12)
            assert 0.002 < np.abs(eps).max() <= 0.02
            np.testing.assert_allclose(eps, fr["strain"], atol=1e-12)
            if layer:
                assert np.all(eps[2] == 0) and np.all(fr["cell"][2] == [0, 0, gen.VACUUM])
            disp = fr["disp"]
            rms = np.sqrt((disp ** 2).sum(1).mean())
            assert 0.03 <= rms <= 0.05 and rms == pytest.approx(fr["disp_rms"])
            np.testing.assert_allclose(disp.sum(0), 0, atol=1e-12)
            # what is left after strain and random displacements is the E2g mode: opposite
            # in-plane displacements of the two sublattices along a random direction
            e2g = fr["coords"] - xyz0 @ (np.eye(3) + eps) - disp
            if layer:
                assert np.any(disp[:, 2] != 0)  # out of plane too
                d = fr["e2g_dir"]
                assert d[2] == 0 and np.linalg.norm(d) == pytest.approx(1)
                np.testing.assert_allclose(e2g, fr["e2g_amp"] * np.array([d, -d]), atol=1e-12)
                assert 0 <= fr["e2g_amp"] <= 0.08
            else:
                np.testing.assert_allclose(e2g, 0, atol=1e-12)
        amps = [fr["e2g_amp"] for fr in frames[1:]]
        assert not layer or (max(amps) > 0.04 and len(set(amps)) == len(amps))
    # the written frames read back as periodic structures with the recorded parameters
    s = geometry.read_structures(paths[0])
    atoms = ase.io.read(paths[0], index=":")
    fr = gen.make_frames("hbn", 12, 5)
    for k in (0, 7):
        np.testing.assert_allclose(s[k].coords, fr[k]["coords"], atol=1e-9)
        assert s[k].pbc.tolist() == [True, True, False] and atoms[k].info["split"] == "test"
        assert atoms[k].info["e2g_amp"] == pytest.approx(fr[k]["e2g_amp"], abs=1e-6)
        assert P.detect_path_kind(s[k].cell, s[k].pbc) == "hex2d"


# ------------------------------------------------------------- embedded periodic sets


def test_embedded_periodic_sets_cache_key_frames_and_import(tmp_path):
    from data_prep import make_periodic_cells as gen  # pylint: disable=import-outside-toplevel
    from helm_jax.data import embedded  # pylint: disable=import-outside-toplevel

    small = embedded.PERIODIC_GEOMETRIES["small"]
    base = embedded.PERIODIC_SETTINGS["small"]
    key = embedded.periodic_cache_key(small, base)
    assert key == embedded.periodic_cache_key(small, dataclasses.replace(base))
    others = {embedded.periodic_cache_key(small, dataclasses.replace(base, **kw)) for kw in (
        {"kmesh": (2, 2, 1)}, {"basis": "gth-dzvp"}, {"smearing": 0.01}, {"band_path": 60},
        {"ke_cutoff": 40.0})}
    assert key not in others and len(others) == 5
    assert key != embedded.periodic_cache_key(embedded.PERIODIC_GEOMETRIES["hbn"], base)
    assert key != embedded.cache_key(small)
    assert embedded.periodic_cache_path("small", cache_dir=str(tmp_path)).endswith(
        f"embedded-periodic-{key}.h5")
    # the shipped files are the generator's frames: train (seed 1, ideal first), val (2),
    # test (3), so labels of those runs can be imported
    counts = {"graphene": (16, 4, 6), "hbn": (16, 4, 6), "diamond": (8, 2, 2), "small": (2, 0, 1)}
    for name, (n_train, n_val, n_test) in counts.items():
        system = "hbn" if name == "small" else name
        want = "".join(gen.format_frames(gen.make_frames(system, n, seed, ideal_first=ideal),
                                         system, seed, split)
                       for n, seed, split, ideal in ((n_train, 1, "train", True),
                                                     (n_val, 2, "val", False),
                                                     (n_test, 3, "test", False)) if n)
        with open(embedded.PERIODIC_GEOMETRIES[name]) as fh:
            assert fh.read() == want, name
        splits = embedded.periodic_splits(name)
        assert [len(splits.get(k, [])) for k in ("train", "val", "test")] == [n_train, n_val,
                                                                              n_test]
    # import: labels of the same frames and settings from two files, in another order
    frames = geometry.read_structures(small)
    files = [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    for path, which in zip(files, ([2, 0], [1])):
        with h5py.File(path, "w") as f:
            h5format.write_file_attrs(f, {**base.attrs(), "input_file": "x.extxyz"})
            for g, i in enumerate(which):
                _write_fake(f, h5format.group_key(g), frames[i], energy=float(i))
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="1 of 3 frames"):
        embedded.import_periodic_labels(files[:1], "small", cache_dir=cache)
    out = embedded.import_periodic_labels(",".join(files), "small", cache_dir=cache)
    assert out == embedded.periodic_cache_path("small", cache_dir=cache)
    ds = open_dataset(out, periodic=True)
    assert [ds[i].energy for i in range(3)] == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(ds[2].coords, frames[2].coords)
    assert embedded.ensure_labelled_periodic("small", cache_dir=cache) == out  # no SCF
    with pytest.raises(ValueError, match="different settings"):
        embedded.import_periodic_labels(files, "small", dataclasses.replace(
            base, kmesh=(2, 2, 1)), cache_dir=cache)


def _write_fake(f, key, structure, energy):
    """A periodic group with on-site identity blocks (4 GTH-SZV AOs per B or N atom)."""
    from helm_jax.data.records import PeriodicLabels  # pylint: disable=import-outside-toplevel

    n_ao = np.array([4, 4], np.int32)
    blocks = np.concatenate([np.eye(4).ravel()] * 2)
    labels = PeriodicLabels(pairs=np.array([[0, 0], [1, 1]], np.int32),
                            translations=np.zeros((2, 3), np.int32), fock_blocks=blocks,
                            overlap_blocks=blocks, block_offsets=np.array([0, 16, 32]),
                            n_ao_per_atom=n_ao, weight=np.ones(2),
                            alias_distance=np.full(2, np.inf), kmesh=np.array([3, 3, 1]))
    h5format.write_periodic_structure(
        f, key, elements=structure.elements, coords=structure.coords, cell=structure.cell,
        pbc=structure.pbc, labels=labels, energy=energy, charge=0, spin=0, n_electrons=8,
        converged=True, scf_cycles=1, source=structure.source)
