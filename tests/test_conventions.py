"""ORCA / Psi4 / OMol_CSH AO orders <-> PySCF, checked against PySCF's own AO labels."""

import numpy as np
import pytest

from helm_jax import basis, conventions
import molecules


def _mol_and_overlap(entry, basis_name, ecp=None):
    symbols, coords = entry
    mol = molecules.pyscf_mol(symbols, coords, basis_name, ecp)
    return mol, [basis.atomic_number(s) for s in symbols], mol.intor("int1e_ovlp")


CASES = [(molecules.ETHANOL, "def2-svp", None), (molecules.METHYL_IODIDE, "def2-tzvpd",
                                                  "def2-tzvpd")]


@pytest.mark.parametrize("convention,case", [("orca", 0), ("orca", 1), ("psi4", 0),
                                              ("psi4", 1), ("omol_csh", 1)])
def test_round_trips_are_exact(convention, case):
    entry, basis_name, ecp = CASES[case]
    _, z, s = _mol_and_overlap(entry, basis_name, ecp)
    foreign = conventions.from_pyscf(s, z, basis_name, ecp, convention)
    assert not np.array_equal(foreign, s)  # the orders really differ
    back = conventions.to_pyscf(foreign, z, basis_name, ecp, convention)
    assert np.abs(back - s).max() < 1e-12


def _labels_in(convention, entry, basis_name, ecp=None):
    mol, z, _ = _mol_and_overlap(entry, basis_name, ecp)
    t = conventions.to_pyscf_transform(z, basis_name, ecp, convention).inverse()
    labels = mol.ao_labels(fmt=False)
    return [labels[i] for i in t.perm], t.sign, labels


def test_orca_m_order_matches_orca_documentation():
    orca, _, _ = _labels_in("orca", molecules.WATER, "def2-svp")
    o = [lab for lab in orca if lab[0] == 0]  # oxygen
    # ORCA: p as (pz, px, py); d as (dz2, dxz, dyz, dx2-y2, dxy).
    assert [lab[3] for lab in o[3:6]] == ["z", "x", "y"]
    assert [lab[3] for lab in o[9:14]] == ["z^2", "xz", "yz", "x2-y2", "xy"]


def test_orca_f_sign_flips_on_m_plus_minus_3():
    orca, sign, _ = _labels_in("orca", molecules.WATER, "def2-tzvpd")
    flipped = sorted({lab[3] for lab, sg in zip(orca, sign) if sg < 0})
    assert flipped == ["+3", "-3"]  # f m = +3 and m = -3 in PySCF's labels
    _, sign_psi4, _ = _labels_in("psi4", molecules.WATER, "def2-tzvpd")
    assert np.all(sign_psi4 == 1)


def test_orca_tzvpd_diffuse_shells_come_last():
    # O in ORCA def2-TZVPD: 5s 3p 2d 1f, then the diffuse s, p, d (shell order json).
    mol, _, _ = _mol_and_overlap(molecules.WATER, "def2-tzvpd")
    t = conventions.to_pyscf_transform([8, 1, 1], "def2-tzvpd", None, "orca").inverse()
    ao_shell = np.repeat(np.arange(mol.nbas), [2 * mol.bas_angular(i) + 1
                                               for i in range(mol.nbas)])
    orca_shells = list(dict.fromkeys(ao_shell[t.perm][:40]))  # oxygen's 40 AOs
    s_shells = [b for b in range(mol.nbas) if mol.bas_angular(b) == 0 and mol.bas_atom(b) == 0]
    diffuse_s = min(s_shells, key=lambda b: mol.bas_exp(b).min())
    assert orca_shells[11] == diffuse_s  # the 12th ORCA shell is the most diffuse s shell


def test_omol_quirk_applied_then_undone():
    _, z, s = _mol_and_overlap(molecules.METHYL_IODIDE, "def2-tzvpd", "def2-tzvpd")
    orca = conventions.from_pyscf(s, z, "def2-tzvpd", "def2-tzvpd", "orca")
    stored = conventions.from_pyscf(s, z, "def2-tzvpd", "def2-tzvpd", "omol_csh")
    # The quirk is the ORCA -> standard m reordering applied over l-sorted shell lists.
    quirk = conventions._molecule([
        conventions._within_shells(
            sorted(conventions.foreign_shell_order(zi, "def2-tzvpd", "def2-tzvpd", "orca")),
            "orca", "standard") for zi in z])
    assert np.abs(quirk.apply(orca) - stored).max() < 1e-14
    assert np.abs(quirk.inverse().apply(stored) - orca).max() < 1e-14


def test_wrong_size_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit"):
        conventions.to_pyscf(np.eye(10), [8, 1, 1], "def2-svp", None, "orca")
    with pytest.raises(ValueError, match="Unknown convention"):
        conventions.to_pyscf_transform([8, 1, 1], "def2-svp", None, "gaussian")
