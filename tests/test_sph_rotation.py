"""The decisive convention test: PySCF matrices of a rotated molecule equal D M D^T.

D is built from e3nn-jax Wigner matrices and the PySCF <-> e3nn change of basis
(``helm_jax.sph``). Hartree-Fock is used for Fock matrices because DFT grids are not
rotation invariant (see docs/orbital_algebra.md, "Rotation errors").
"""

import numpy as np
import pytest

from helm_jax import basis, sph
from equivariance_checks import assert_equivariant, pole_rotations, rotate_vectors
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
    """random, and the first bond onto the PySCF pole z and onto the e3nn pole y."""
    return pole_rotations(7, coords[1] - coords[0])


def _rotate_ao_matrix(symbols, basis_name, ecp):
    """rotate_outputs for an AO matrix M: D M D^T."""
    def rotate(rot, m):
        d = sph.molecule_ao_wigner(_shell_ls(symbols, basis_name, ecp), rot)
        return d @ m @ d.T
    return rotate


def _hf_fock(mol, conv_tol=1e-13, conv_tol_grad=1e-9):
    """Converged Hartree-Fock Fock matrix: RHF ``[N, N]``, or UHF alpha and beta
    ``[2, N, N]`` for an open shell (``mol.spin != 0``)."""
    from pyscf import scf
    mf = (scf.UHF if mol.spin else scf.RHF)(mol)
    mf.conv_tol = conv_tol
    mf.conv_tol_grad = conv_tol_grad
    mf.max_cycle = 200
    mf.kernel()
    assert mf.converged
    return mf.get_fock()


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_rotates_with_wigner(case):
    (symbols, coords), basis_name, ecp = CASES[case]
    assert_equivariant(
        lambda c: molecules.pyscf_mol(symbols, c, basis_name, ecp).intor("int1e_ovlp"), coords,
        rotate_vectors, _rotate_ao_matrix(symbols, basis_name, ecp),
        rotations=_rotations(coords), atol=1e-10, name=f"overlap of {case}")


# Hartree-Fock of ethanol and of HI with its ECP take ~10 s each: slow (the overlaps of all
# four cases, and the Fock matrices of both waters, stay in the fast run).
SLOW_FOCK_CASES = ("ethanol_svp", "hi_tzvpd_ecp")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow)
                                  if c in SLOW_FOCK_CASES else c for c in sorted(CASES)])
def test_hartree_fock_fock_rotates_with_wigner(case):
    (symbols, coords), basis_name, ecp = CASES[case]
    rots = _rotations(coords)
    if case != "water_svp":  # one random rotation is enough for the slower molecules
        rots = {"bond_on_y": rots["bond_on_y"]}
    assert_equivariant(lambda c: _hf_fock(molecules.pyscf_mol(symbols, c, basis_name, ecp)),
                       coords, rotate_vectors, _rotate_ao_matrix(symbols, basis_name, ecp),
                       rotations=rots, atol=1e-8, name=f"Hartree-Fock Fock matrix of {case}")


# The water cation (doublet, 2S = 1) in def2-SVP and in def2-TZVPD (f shell on O): both
# spins' Fock matrices rotate with the same D, so a model's alpha and beta heads share the
# closed-shell equivariance (docs/model_and_training.md, "Open shells").
@pytest.mark.parametrize("basis_name", ["def2-svp",
                                        pytest.param("def2-tzvpd", marks=pytest.mark.slow)])
def test_open_shell_alpha_and_beta_focks_rotate_with_wigner(basis_name):
    symbols, coords = molecules.WATER
    rotate = _rotate_ao_matrix(symbols, basis_name, None)
    rots = _rotations(coords)
    if basis_name != "def2-svp":
        rots = {"bond_on_y": rots["bond_on_y"]}
    assert_equivariant(
        lambda c: _hf_fock(molecules.pyscf_mol(symbols, c, basis_name, charge=1, spin=1),
                           conv_tol=1e-12, conv_tol_grad=1e-8),
        coords, rotate_vectors, lambda rot, f: np.stack([rotate(rot, f[0]), rotate(rot, f[1])]),
        rotations=rots, atol=1e-8, name=f"UHF Fock matrices of H2O+ in {basis_name}")
