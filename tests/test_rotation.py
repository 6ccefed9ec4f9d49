"""The decisive convention test: PySCF matrices of a rotated molecule equal D M D^T.

D is built from e3nn-jax Wigner matrices and the PySCF <-> e3nn change of basis
(``helm_jax.sph``). Hartree-Fock is used for Fock matrices because DFT grids are not
rotation invariant (see docs/orbital_algebra.md, "Rotation errors").
"""

import numpy as np
import pytest

from helm_jax import basis, sph
import molecules

CASES = {
    "water_svp": (molecules.WATER, "def2-svp", None),
    "ethanol_svp": (molecules.ETHANOL, "def2-svp", None),
    "water_tzvpd_f": (molecules.WATER, "def2-tzvpd", None),  # O has an f shell
    "hi_tzvpd_ecp": (molecules.HYDROGEN_IODIDE, "def2-tzvpd", "def2-tzvpd"),
}


def _shell_ls(symbols, basis_name, ecp):
    out = []
    for s in symbols:
        out += basis.element_basis(s, basis_name, ecp).shell_l
    return out


def _rotations(coords):
    bond = coords[1] - coords[0]
    return {
        "random": molecules.random_rotation(7),
        "bond_on_z": molecules.rotation_onto(bond, np.array([0.0, 0.0, 1.0])),  # PySCF pole
        "bond_on_y": molecules.rotation_onto(bond, np.array([0.0, 1.0, 0.0])),  # e3nn pole
    }


def _hf_fock(mol):
    from pyscf import scf
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-13
    mf.conv_tol_grad = 1e-9
    mf.max_cycle = 200
    mf.kernel()
    assert mf.converged
    return mf.get_fock()


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_rotates_with_wigner(case):
    (symbols, coords), basis_name, ecp = CASES[case]
    s0 = molecules.pyscf_mol(symbols, coords, basis_name, ecp).intor("int1e_ovlp")
    for name, rot in _rotations(coords).items():
        s1 = molecules.pyscf_mol(symbols, coords @ rot.T, basis_name, ecp).intor("int1e_ovlp")
        d = sph.molecule_ao_wigner(_shell_ls(symbols, basis_name, ecp), rot)
        err = np.abs(s1 - d @ s0 @ d.T).max()
        assert err < 1e-10, (name, err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hartree_fock_fock_rotates_with_wigner(case):
    (symbols, coords), basis_name, ecp = CASES[case]
    f0 = _hf_fock(molecules.pyscf_mol(symbols, coords, basis_name, ecp))
    rots = _rotations(coords)
    if case != "water_svp":  # one random rotation is enough for the slower molecules
        rots = {"bond_on_y": rots["bond_on_y"]}
    for name, rot in rots.items():
        f1 = _hf_fock(molecules.pyscf_mol(symbols, coords @ rot.T, basis_name, ecp))
        d = sph.molecule_ao_wigner(_shell_ls(symbols, basis_name, ecp), rot)
        err = np.abs(f1 - d @ f0 @ d.T).max()
        assert err < 1e-8, (name, err)
