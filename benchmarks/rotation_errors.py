"""Prints max |S(R) - D S D^T| and max |F(R) - D F D^T| for the molecules of
tests/test_sph_rotation.py (PySCF Hartree-Fock, conv_tol 1e-13): the convention table of
docs/orbital_algebra.md.

    python benchmarks/rotation_errors.py
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

import molecules  # noqa: E402
import test_sph_rotation as tr  # noqa: E402
from helm_jax import sph  # noqa: E402


def main():
    """Prints the rotation errors of PySCF Fock/overlap blocks per convention case."""
    for case, ((symbols, coords), basis, ecp) in sorted(tr.CASES.items()):
        mol0 = molecules.pyscf_mol(symbols, coords, basis, ecp)
        f0, s0 = tr._hf_fock(mol0), mol0.intor("int1e_ovlp")
        for name, rot in tr._rotations(coords).items():
            mol = molecules.pyscf_mol(symbols, coords @ rot.T, basis, ecp)
            d = sph.molecule_ao_wigner(tr._shell_ls(symbols, basis, ecp), rot)
            es = np.abs(mol.intor("int1e_ovlp") - d @ s0 @ d.T).max()
            ef = np.abs(tr._hf_fock(mol) - d @ f0 @ d.T).max()
            print(f"{case:16s} {name:10s} max|S(R)-DSD^T|={es:.1e} "
                  f"max|F(R)-DFD^T|={ef:.1e} Eh")


if __name__ == "__main__":
    main()
