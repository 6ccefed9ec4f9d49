"""DeepH-pack and CP2K (HELM reference) periodic readers: AO conventions checked against
PySCF's AOs, exact write/read round trips, and PySCF overlaps read back through each layout
(docs/periodic.md)."""

import json
import math
import os
import sys

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from helm_jax import basis as basis_lib  # pylint: disable=wrong-import-position
from helm_jax import conventions  # pylint: disable=wrong-import-position
from helm_jax.data import periodic as P  # pylint: disable=wrong-import-position
from helm_jax.data.readers import (CP2KReader, DeepHReader, detect_kind,  # pylint: disable=wrong-import-position
                                   open_dataset)
from helm_jax.data.readers import cp2k as cp2k_lib  # pylint: disable=wrong-import-position
from helm_jax.data.readers import deeph as deeph_lib  # pylint: disable=wrong-import-position
from helm_jax.data.records import DataError, PeriodicLabels, Record  # pylint: disable=wrong-import-position
from helm_jax.units import HARTREE_EV  # pylint: disable=wrong-import-position

A, C = 2.50, 20.0
CELL = np.array([[A, 0, 0], [-A / 2, A * np.sqrt(3) / 2, 0], [0, 0, C]])
XYZ = np.array([[0.0, 0.0, C / 2], [0.0, A / np.sqrt(3), C / 2]])


def _ao_values(l, pts):
    """PySCF's real AOs of one l shell at points of the unit sphere [P, 2l+1]."""
    from pyscf import gto  # pylint: disable=import-outside-toplevel

    mol = gto.M(atom="ghost-H 0 0 0", basis={"ghost-H": [[l, [1.0, 1.0]]]}, spin=None,
                verbose=0)
    return mol.eval_gto("GTOval_sph", pts)


def _unit_points(n=200):
    p = np.random.default_rng(0).normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _assert_same_functions(foreign, l, convention):
    """foreign [P, 2l+1] (a code's AO order) mapped by the convention equals PySCF's AOs up
    to one positive scale per function."""
    pts_ao = _ao_values(l, _unit_points())
    gather, sign = conventions.shell_reorder(l, convention)
    mapped = foreign[:, gather] * sign
    for m in range(2 * l + 1):
        scale = np.dot(mapped[:, m], pts_ao[:, m]) / np.dot(mapped[:, m], mapped[:, m])
        assert scale > 0, (l, m)
        np.testing.assert_allclose(scale * mapped[:, m], pts_ao[:, m], atol=1e-12)


def _cp2k_c2s(l):
    """CP2K's Cartesian -> spherical transformation (Schlegel and Frisch, Int. J. Quantum
    Chem. 54, 83 (1995), eq. 15, as CP2K's orbital_transformation_matrices.F evaluates it):
    rows m = -l..l, columns (lx, ly, lz) with lx descending."""
    carts = [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]
    c2s = np.zeros((2 * l + 1, len(carts)))
    f = math.factorial
    for ic, (lx, ly, lz) in enumerate(carts):
        for m in range(-l, l + 1):
            ma = abs(m)
            j = lx + ly - ma
            if j < 0 or j % 2:
                continue
            j //= 2
            s1 = 0.0
            for i in range((l - ma) // 2 + 1):
                s2 = 0.0
                for k in range(j + 1):
                    if (m < 0 and abs(ma - lx) % 2 == 1) or (m > 0 and abs(ma - lx) % 2 == 0):
                        s = (-1.0) ** ((ma - lx + 2 * k) // 2) * math.sqrt(2.0)
                    elif m == 0 and lx % 2 == 0:
                        s = (-1.0) ** (k - lx // 2)
                    else:
                        s = 0.0
                    s2 += math.comb(j, k) * (math.comb(ma, lx - 2 * k) if lx >= 2 * k else 0) * s
                s1 += (math.comb(l, i) * (math.comb(i, j) if j <= i else 0) * (-1.0) ** i
                       * f(2 * l - 2 * i) / f(l - ma - 2 * i) * s2)
            c2s[l + m, ic] = math.sqrt(f(2 * lx) * f(2 * ly) * f(2 * lz) * f(l) * f(l - ma) / (
                f(lx) * f(ly) * f(lz) * f(2 * l) * f(l + ma))) * s1 / (2.0 ** l * f(l))
    return c2s, carts


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
def test_cp2k_ao_order_matches_its_spherical_harmonics(l):
    """CP2K's spherical AOs (its c2s on normalised Cartesian Gaussians) -> PySCF's AOs by
    the "cp2k" convention (only p is reordered: y, z, x -> x, y, z)."""
    c2s, carts = _cp2k_c2s(l)
    pts = _unit_points()
    dfac = lambda n: math.prod(range(n, 0, -2)) if n > 0 else 1  # noqa: E731
    cart = np.stack([pts[:, 0] ** a * pts[:, 1] ** b * pts[:, 2] ** c
                     / math.sqrt(dfac(2 * a - 1) * dfac(2 * b - 1) * dfac(2 * c - 1))
                     for a, b, c in carts], 1)
    _assert_same_functions(cart @ c2s.T, l, "cp2k")


@pytest.mark.parametrize("l", [1, 2, 3])
def test_deeph_ao_order_matches_openmx_real_harmonics(l):
    """DeepH (OpenMX) order: p x, y, z; d z^2, x^2-y^2, xy, xz, yz; f m = 0, 1, -1, 2, -2,
    3, -3 (deeph/rotate.py), as Cartesian forms with the real-harmonic signs."""
    x, y, z = _unit_points().T
    forms = {1: [x, y, z],
             2: [3 * z * z - 1, x * x - y * y, x * y, x * z, y * z],
             3: [z * (5 * z * z - 3), x * (5 * z * z - 1), y * (5 * z * z - 1), z * (x * x - y * y),
                 x * y * z, x * (x * x - 3 * y * y), y * (3 * x * x - y * y)]}
    _assert_same_functions(np.stack(forms[l], 1), l, "deeph")


# ------------------------------------------------------------------------------- DeepH


def _synthetic_record(basis, elements=(5, 7), coords=XYZ, cell=CELL, pbc=(1, 1, 1), cutoff=6.0,
                      seed=0):
    """A periodic Record with random blocks (H(-T) = H(T)^T) in PySCF order."""
    rng = np.random.default_rng(seed)
    z = np.asarray(elements, np.int32)
    n_ao = np.array([basis_lib.element_basis(int(e), basis).n_ao for e in z])
    pl = P.image_pairs(coords, cell, pbc, cutoff, include_self=True)
    blocks_h, blocks_s = {}, {}
    for i, j, t in zip(pl.i, pl.j, pl.translation):
        key, rev = (i, j, *t), (j, i, *(-t))
        if rev in blocks_h:
            blocks_h[key], blocks_s[key] = blocks_h[rev].T, blocks_s[rev].T
        else:
            blocks_h[key] = rng.normal(size=(n_ao[i], n_ao[j]))
            blocks_s[key] = rng.normal(size=(n_ao[i], n_ao[j])) * 0.1
            if key == rev:
                blocks_h[key] = blocks_h[key] + blocks_h[key].T
                blocks_s[key] = blocks_s[key] + blocks_s[key].T
    keys = list(blocks_h)
    _, pairs, trans, (h, s), off = P.pack_pairs(
        [k[0] for k in keys], [k[1] for k in keys], [k[2:] for k in keys],
        [blocks_h[k] for k in keys], [blocks_s[k] for k in keys], n_ao_per_atom=n_ao)
    labels = PeriodicLabels(pairs=pairs, translations=trans, fock_blocks=h, overlap_blocks=s,
                            block_offsets=off, n_ao_per_atom=n_ao.astype(np.int32),
                            weight=np.ones(len(pairs)), alias_distance=np.full(len(pairs), np.inf),
                            fermi=-0.123)
    return Record(elements=z, coords=np.asarray(coords, float), cell=np.asarray(cell, float),
                  pbc=np.asarray(pbc, bool), periodic=labels)


def _assert_same_labels(a, b, rtol=1e-15):
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.translations, b.translations)
    np.testing.assert_array_equal(a.block_offsets, b.block_offsets)
    np.testing.assert_allclose(a.fock_blocks, b.fock_blocks, rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(a.overlap_blocks, b.overlap_blocks, rtol=rtol, atol=1e-15)


@pytest.mark.parametrize("basis,elements,cell", [
    ("gth-dzvp", (5, 7), CELL),  # s, p, d shells
    ("def2-svp", (29,), np.array([[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]])),  # f shells
])
def test_deeph_round_trip_is_exact(tmp_path, basis, elements, cell):
    coords = XYZ[:len(elements)] if len(elements) == 2 else np.zeros((1, 3))
    rec = _synthetic_record(basis, elements, coords, cell)
    folder = str(tmp_path / "deeph" / "struct0")
    deeph_lib.write_deeph(folder, rec, basis)
    # the files follow DeepH's conventions: eV, OpenMX order, 1-based keys, column vectors
    with h5py.File(os.path.join(folder, "hamiltonians.h5")) as f:
        assert "[0, 0, 0, 1, 1]" in f and all(k.startswith("[") for k in f)
    np.testing.assert_allclose(np.loadtxt(os.path.join(folder, "lat.dat")), cell.T)
    assert json.load(open(os.path.join(folder, "info.json")))["fermi_level"] == pytest.approx(
        -0.123 * HARTREE_EV)
    assert detect_kind(str(tmp_path / "deeph")) == "deeph"
    ds = open_dataset(str(tmp_path / "deeph"), basis=basis)
    assert isinstance(ds, DeepHReader) and ds.keys == ["struct0"]
    back = ds[0]
    _assert_same_labels(back.periodic, rec.periodic, rtol=1e-14)
    np.testing.assert_allclose(back.coords, rec.coords, atol=1e-14)
    np.testing.assert_allclose(back.cell, cell, atol=1e-14)
    assert back.periodic.fermi == pytest.approx(-0.123, abs=1e-15)


def test_deeph_layout_with_pyscf_overlaps_gives_pyscf_overlap_at_any_k(tmp_path):
    """A DeepH folder written by hand (keys, 1-based atoms, lat.dat columns, OpenMX d order)
    from PySCF's real-space overlaps S(T) of h-BN in GTH-DZVP: the reader's blocks summed
    at off-mesh k give PySCF's S(k) (cell.pbc_intor)."""
    from pyscf import gto as mgto  # pylint: disable=import-outside-toplevel
    from pyscf.pbc import gto as pgto  # pylint: disable=import-outside-toplevel

    basis = "gth-dzvp"
    cell = pgto.M(a=CELL, atom=[["B", XYZ[0]], ["N", XYZ[1]]], unit="A", basis=basis,
                  pseudo="gth-pbe", verbose=0)
    openmx_from_pyscf = {0: [0], 1: [0, 1, 2], 2: [2, 4, 0, 3, 1]}  # DeepH slot <- PySCF AO
    shells = basis_lib.element_basis(5, basis)
    perm = np.concatenate([o + np.array(openmx_from_pyscf[l])
                           for o, l in zip(shells.shell_offsets, shells.shell_l)])
    folder = str(tmp_path / "hbn")
    os.makedirs(folder)
    np.savetxt(os.path.join(folder, "element.dat"), [5, 7], fmt="%d")
    np.savetxt(os.path.join(folder, "site_positions.dat"), XYZ.T)
    np.savetxt(os.path.join(folder, "lat.dat"), CELL.T)
    with open(os.path.join(folder, "orbital_types.dat"), "w") as fh:
        fh.write("0  0  1  1  2\n0  0  1  1  2\n")
    home = mgto.M(atom=[["B", XYZ[0]], ["N", XYZ[1]]], unit="A", basis=basis)
    na = len(perm)
    with h5py.File(os.path.join(folder, "overlaps.h5"), "w") as fs, \
            h5py.File(os.path.join(folder, "hamiltonians.h5"), "w") as fh:
        for m in range(-7, 8):
            for n in range(-7, 8):
                shift = np.array([m, n, 0]) @ CELL
                s_mn = mgto.intor_cross("int1e_ovlp", home, mgto.M(
                    atom=[["B", XYZ[0] + shift], ["N", XYZ[1] + shift]], unit="A", basis=basis))
                for i in range(2):
                    for j in range(2):
                        s = s_mn[i * na:(i + 1) * na, j * na:(j + 1) * na][perm][:, perm]
                        fs[f"[{m}, {n}, 0, {i + 1}, {j + 1}]"] = s
                        fh[f"[{m}, {n}, 0, {i + 1}, {j + 1}]"] = 2.0 * s  # eV
    rec = DeepHReader(folder, basis=basis)[0]
    labels = rec.periodic
    assert labels.n_pairs == 4 * 15 * 15 and labels.fock_blocks.max() < 2.0 / HARTREE_EV + 1e-12
    t, s_t = P.assemble_translations(labels.pairs[:, 0], labels.pairs[:, 1], labels.translations,
                                     labels.overlap_blocks, labels.block_offsets,
                                     labels.n_ao_per_atom)
    k = np.array([[0.1, 0.2, 0.0], [0.37, -0.21, 0.0], [1 / 3, 2 / 3, 0.0]])
    ref = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=cell.get_abs_kpts(k)))
    assert np.abs(P.bloch_sum(s_t, t, k) - ref).max() < 1e-8
    assert np.abs(P.bloch_sum(s_t, -t, k) - ref).max() > 0.01  # T's sign matters


def test_deeph_errors(tmp_path):
    rec = _synthetic_record("gth-szv", cutoff=3.0)
    folder = str(tmp_path / "s")
    deeph_lib.write_deeph(folder, rec, "gth-szv")
    with pytest.raises(DataError, match=r"atom 0 \(B\) in orbital_types.dat: shells \[0, 1\] .* "
                                        r"\[0, 0, 1, 1, 2\]"):
        DeepHReader(folder, basis="gth-dzvp")[0]
    with pytest.raises(ValueError, match="needs basis="):
        DeepHReader(folder)
    info = json.load(open(os.path.join(folder, "info.json")))
    json.dump({**info, "isspinful": True}, open(os.path.join(folder, "info.json"), "w"))
    with pytest.raises(DataError, match="spinful"):
        DeepHReader(folder, basis="gth-szv")[0]


# -------------------------------------------------------------------------------- CP2K


def _supercell_overlap(basis="gth-szv", reps=4):
    """A graphene supercell (reps x reps), its PySCF Gamma-point overlap and Fock-like
    matrix (S + 0.3 S^2, symmetric), PySCF order."""
    from pyscf.pbc import gto as pgto  # pylint: disable=import-outside-toplevel

    a = 2.46
    prim = np.array([[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 10.0]])
    base = np.array([[0.0, 0.0, 5.0], [0.0, a / np.sqrt(3), 5.0]])
    coords = np.array([r + np.array([m, n, 0]) @ prim for m in range(reps) for n in range(reps)
                       for r in base])
    cell = prim * np.array([[reps], [reps], [1]])
    pcell = pgto.M(a=cell, atom=[["C", r] for r in coords], unit="A", basis=basis,
                   pseudo="gth-pbe", verbose=0)
    s = np.asarray(pcell.pbc_intor("int1e_ovlp", hermi=1))
    fock = s + 0.3 * s @ s
    return ["C"] * len(coords), coords, cell, 0.5 * (fock + fock.T), s


@pytest.mark.parametrize("binary", [True, False])
def test_cp2k_round_trip_and_fermi(tmp_path, binary):
    symbols, coords, cell, fock, ovlp = _supercell_overlap()
    folder = str(tmp_path / "cp2k" / "frame_000")
    cp2k_lib.write_cp2k(folder, symbols, coords, cell, fock, ovlp, "gth-szv", fermi_ev=-4.747024,
                        binary=binary)
    with open(os.path.join(folder, "helm.out"), "a") as fh:
        fh.write(" ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:          -182.123456789012\n")
    assert detect_kind(str(tmp_path / "cp2k")) == "cp2k"
    ds = open_dataset(str(tmp_path / "cp2k"), basis="gth-szv")
    assert isinstance(ds, CP2KReader) and ds.keys == ["frame_000"]
    rec = ds[0]
    h_g, s_g = cp2k_lib.gamma_matrices(rec)
    # exact up to the rounding of 1/3-weighted three-fold ties (1 ulp), binary or text
    np.testing.assert_allclose(h_g, fock, rtol=1e-15, atol=0)
    np.testing.assert_allclose(s_g, ovlp, rtol=1e-15, atol=0)
    assert rec.periodic.fermi == pytest.approx(-4.747024 / HARTREE_EV, abs=1e-15)
    assert rec.energy == pytest.approx(-182.123456789012, abs=1e-12)
    assert rec.periodic.kmesh.tolist() == [1, 1, 1] and rec.pbc.all()
    # atoms half a supercell apart tie between two (or three) images: all kept, weighted
    assert set(np.round(1 / rec.periodic.weight).astype(int).tolist()) == {1, 2, 3}
    # a nearest-neighbour block is the molecular overlap of the two atoms up to the folded
    # images (alias_distance >= 8.5 A here)
    from pyscf import gto as mgto  # pylint: disable=import-outside-toplevel
    labels = rec.periodic
    p = int(np.flatnonzero((labels.pairs[:, 0] == 0) & (labels.pairs[:, 1] == 1)
                           & ~labels.translations.any(1))[0])
    pair = mgto.M(atom=[["C", coords[0]], ["C", coords[1]]], unit="A", basis="gth-szv")
    s_mol = pair.intor("int1e_ovlp")[:4, 4:]
    assert labels.alias_distance[p] > 8.5
    assert np.abs(labels.block(p, "overlap") - s_mol).max() < 1e-3
    np.testing.assert_allclose(labels.fock_minus_mu_s(), labels.fock_blocks
                               - labels.fermi * labels.overlap_blocks)


def test_cp2k_text_formats_and_helm_headers(tmp_path):
    m = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, -0.3], [0.0, -0.3, 3.0]])
    up, full = str(tmp_path / "up.csr"), str(tmp_path / "full.csr")
    cp2k_lib.write_csr(up, m, binary=False, upper=True)
    cp2k_lib.write_csr(full, m, binary=False, upper=False)
    np.testing.assert_array_equal(cp2k_lib.dense_from_csr(up, 3), m)  # symmetrised
    np.testing.assert_array_equal(cp2k_lib.dense_from_csr(full, 3), m)  # not doubled
    binf = str(tmp_path / "b.csr")
    cp2k_lib.write_csr(binf, m, binary=True)
    raw = np.fromfile(binf, dtype=np.uint8)
    assert raw.size == 24 * 5 and int.from_bytes(raw[:4].tobytes(), "little") == 16
    np.testing.assert_array_equal(cp2k_lib.dense_from_csr(binf, 3), m)
    xyz = tmp_path / "s.xyz"
    xyz.write_text("2\nCell: 10.0 11.0 12.0\nH 0 0 0\nH 0 0 0.74\n")
    _, coords, cell = cp2k_lib.read_xyz_cell(str(xyz))
    np.testing.assert_array_equal(cell, np.diag([10.0, 11.0, 12.0]))
    out = tmp_path / "run.out"
    out.write_text(" Fermi energy:   -0.1\n ... \n Fermi energy:   -0.2\n")
    assert cp2k_lib.read_fermi(str(out)) == -0.2  # the last (converged) value
    with pytest.raises(DataError, match="beyond the 2 AOs"):
        cp2k_lib.dense_from_csr(up, 2)


def test_cp2k_p_order_is_converted(tmp_path):
    """A CP2K matrix with one p shell: its (y, z, x) rows and columns land on PySCF's
    (x, y, z)."""
    # PySCF order for C in gth-szv: s, px, py, pz; fill the CP2K-order matrix by hand
    cp2k_order = np.diag([1.0, 20.0, 30.0, 10.0])  # s, py, pz, px
    folder = str(tmp_path / "c")
    os.makedirs(folder)
    (open(os.path.join(folder, "c.xyz"), "w")).write('1\nLattice="6 0 0 0 6 0 0 0 6"\nC 0 0 0\n')
    cp2k_lib.write_csr(os.path.join(folder, "c-KS_SPIN_1-1_0.csr"), cp2k_order)
    cp2k_lib.write_csr(os.path.join(folder, "c-S_SPIN_1-1_0.csr"), np.eye(4))
    rec = CP2KReader(folder, basis="gth-szv")[0]
    h, _ = cp2k_lib.gamma_matrices(rec)
    np.testing.assert_array_equal(h, np.diag([1.0, 10.0, 20.0, 30.0]))


def test_model_graphs_refuse_periodic_records():
    from helm_jax.data import graphs  # pylint: disable=import-outside-toplevel
    from helm_jax.data.records import Record  # pylint: disable=import-outside-toplevel
    rec = Record(elements=np.array([6, 6], np.int32), coords=np.array([[0, 0, 0], [1.4, 0, 0.]]),
                 cell=np.eye(3) * 2.46, pbc=np.array([True, True, False]), key="graphene")
    spec = graphs.GraphSpec(basis_lib.make_template("C", "def2-svp"), 5.0)
    with pytest.raises(ValueError, match="'graphene' is periodic.*config.data.periodic=True"):
        graphs.build_graph(rec, spec)
